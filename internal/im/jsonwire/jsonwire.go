// Package jsonwire encodes and decodes the reference IM's hot JSON messages
// (client frames and bus messages) without reflection, for the message path's
// CPU. Two promises, both checked by fuzz tests against encoding/json:
//
//   - Enc writes exactly the bytes json.Marshal writes for the same struct,
//     given the fields in struct order with the same omitempty rules.
//   - Dec accepts only input that it decodes exactly as json.Unmarshal
//     would: plain keys spelled as the struct's tags, strings without escapes
//     in valid UTF-8, integers, true and false, nested objects and arrays.
//     Anything else (escapes, keys in another case, unknown keys, null,
//     numbers with a fraction or exponent, invalid UTF-8, malformed JSON)
//     makes it report false, and the caller decodes with encoding/json,
//     which also produces the error when there is one.
package jsonwire

import (
	"strconv"
	"unicode/utf8"
)

// Enc appends one JSON object to B. Start with Open(""), end with Close.
type Enc struct {
	B []byte
	n int // members written in the innermost open object or array
}

const hex = "0123456789abcdef"

// AppendString appends s as a JSON string the way encoding/json does (HTML
// characters, U+2028 and U+2029 escaped, invalid UTF-8 as U+FFFD).
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// key writes k (a plain struct tag, no escaping needed) and the colon.
func (e *Enc) key(k string) {
	if e.n > 0 {
		e.B = append(e.B, ',')
	}
	e.n++
	if k == "" {
		return // an array element
	}
	e.B = append(e.B, '"')
	e.B = append(e.B, k...)
	e.B = append(e.B, '"', ':')
}

// Open begins an object under key k ("" for the top level or an array
// element) and returns what Close needs.
func (e *Enc) Open(k string) int {
	e.key(k)
	n := e.n
	e.n = 0
	e.B = append(e.B, '{')
	return n
}

// Close ends the object Open began.
func (e *Enc) Close(saved int) {
	e.B = append(e.B, '}')
	e.n = saved
}

// OpenArray begins an array under key k.
func (e *Enc) OpenArray(k string) int {
	e.key(k)
	n := e.n
	e.n = 0
	e.B = append(e.B, '[')
	return n
}

// CloseArray ends the array OpenArray began.
func (e *Enc) CloseArray(saved int) {
	e.B = append(e.B, ']')
	e.n = saved
}

// Null writes k: null (a nil slice without omitempty).
func (e *Enc) Null(k string) {
	e.key(k)
	e.B = append(e.B, "null"...)
}

// Str writes k: v; with omit, nothing when v is empty.
func (e *Enc) Str(k, v string, omit bool) {
	if omit && v == "" {
		return
	}
	e.key(k)
	e.B = AppendString(e.B, v)
}

// Uint writes k: v; with omit, nothing when v is 0.
func (e *Enc) Uint(k string, v uint64, omit bool) {
	if omit && v == 0 {
		return
	}
	e.key(k)
	e.B = strconv.AppendUint(e.B, v, 10)
}

// Int writes k: v; with omit, nothing when v is 0.
func (e *Enc) Int(k string, v int64, omit bool) {
	if omit && v == 0 {
		return
	}
	e.key(k)
	e.B = strconv.AppendInt(e.B, v, 10)
}

// Bool writes k: v; with omit, nothing when v is false.
func (e *Enc) Bool(k string, v bool, omit bool) {
	if omit && !v {
		return
	}
	e.key(k)
	if v {
		e.B = append(e.B, "true"...)
	} else {
		e.B = append(e.B, "false"...)
	}
}

// Dec reads one JSON value from a byte slice; see the package comment for
// what it accepts. Every method returns false when the input is not what it
// can decode exactly; the decoder is then of no further use.
type Dec struct {
	b []byte
	i int
}

// NewDec returns a decoder of data.
func NewDec(data []byte) *Dec { return &Dec{b: data} }

func (d *Dec) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// End reports whether only white space is left.
func (d *Dec) End() bool {
	d.ws()
	return d.i == len(d.b)
}

// Object reads an object, calling field for each member with the decoder at
// the member's value; field must read the value (or return false).
func (d *Dec) Object(field func(key []byte) bool) bool {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '{' {
		return false
	}
	d.i++
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		return true
	}
	for {
		d.ws()
		k, ok := d.rawString()
		if !ok {
			return false
		}
		d.ws()
		if d.i >= len(d.b) || d.b[d.i] != ':' {
			return false
		}
		d.i++
		d.ws()
		if !field(k) {
			return false
		}
		d.ws()
		if d.i >= len(d.b) {
			return false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case '}':
			d.i++
			return true
		default:
			return false
		}
	}
}

// Array reads an array, calling elem for each element.
func (d *Dec) Array(elem func() bool) bool {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '[' {
		return false
	}
	d.i++
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		return true
	}
	for {
		d.ws()
		if !elem() {
			return false
		}
		d.ws()
		if d.i >= len(d.b) {
			return false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case ']':
			d.i++
			return true
		default:
			return false
		}
	}
}

// rawString reads a string without escapes, in valid UTF-8, and returns its
// bytes (a slice of the input).
func (d *Dec) rawString() ([]byte, bool) {
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return nil, false
	}
	start := d.i + 1
	ascii := true
	for j := start; j < len(d.b); j++ {
		c := d.b[j]
		switch {
		case c == '"':
			s := d.b[start:j]
			if !ascii && !utf8.Valid(s) {
				return nil, false
			}
			d.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// Str reads a string value.
func (d *Dec) Str(dst *string) bool {
	s, ok := d.rawString()
	if ok {
		*dst = string(s)
	}
	return ok
}

// digits reads an optional minus and the integer digits of a number that
// has neither fraction nor exponent.
func (d *Dec) digits(neg bool) ([]byte, bool) {
	start := d.i
	j := d.i
	if neg && j < len(d.b) && d.b[j] == '-' {
		j++
	}
	first := j
	for j < len(d.b) && d.b[j] >= '0' && d.b[j] <= '9' {
		j++
	}
	if j == first || (d.b[first] == '0' && j-first > 1) {
		return nil, false
	}
	if j < len(d.b) {
		switch d.b[j] {
		case '.', 'e', 'E', '-', '+':
			return nil, false
		}
	}
	d.i = j
	return d.b[start:j], true
}

// Uint reads a non-negative integer that fits in 64 bits.
func (d *Dec) Uint(dst *uint64) bool {
	s, ok := d.digits(false)
	if !ok {
		return false
	}
	v, err := strconv.ParseUint(string(s), 10, 64)
	if err != nil {
		return false
	}
	*dst = v
	return true
}

// Int reads an integer that fits in 64 bits.
func (d *Dec) Int(dst *int64) bool {
	s, ok := d.digits(true)
	if !ok {
		return false
	}
	v, err := strconv.ParseInt(string(s), 10, 64)
	if err != nil {
		return false
	}
	*dst = v
	return true
}

// Bool reads true or false.
func (d *Dec) Bool(dst *bool) bool {
	rest := d.b[d.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		*dst = true
		d.i += 4
	case len(rest) >= 5 && string(rest[:5]) == "false":
		*dst = false
		d.i += 5
	default:
		return false
	}
	// "truex" is not a literal.
	if d.i < len(d.b) {
		switch c := d.b[d.i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
			return false
		}
	}
	return true
}
