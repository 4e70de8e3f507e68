// Package remotewrite is the center's side of Prometheus remote write 1.0:
// the receiver at /api/v1/write that stores what other Prometheus-compatible
// senders push, and the queue that writes onward to another store.
package remotewrite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/prometheus/prometheus/prompb"
)

// Errors of the decoder, matched by errors.Is.
var (
	// ErrIntOverflow is a varint longer than 64 bits.
	ErrIntOverflow = errors.New("proto: integer overflow")
	// ErrInvalidLength is a negative or overflowing length.
	ErrInvalidLength = errors.New("proto: negative length found during unmarshaling")
)

// Request is a decoded prompb.WriteRequest. Label names and values are
// sub-slices of the buffer given to Decode and valid only while it is;
// a Request is meant to be reused with Reset to decode without allocating.
type Request struct {
	Series []Series

	labels  []Label
	samples []prompb.Sample
	spans   []span
}

// span locates one series' labels and samples in the flat arrays.
type span struct{ l0, l1, s0, s1 int }

// Series is one TimeSeries of a request.
type Series struct {
	// Key is the bytes of the series' label fields as they were on the
	// wire: the same key always means the same label set.
	Key        []byte
	Labels     []Label
	Samples    []prompb.Sample
	Histograms []prompb.Histogram
	Exemplars  int // exemplars are decoded and dropped: exemplar storage is off

	keyBuf []byte
}

// Label is one label pair, pointing into the decoded buffer.
type Label struct {
	Name, Value []byte
}

// Reset empties r for reuse, keeping its memory.
func (r *Request) Reset() {
	r.Series = r.Series[:0]
	r.labels = r.labels[:0]
	r.samples = r.samples[:0]
	r.spans = r.spans[:0]
}

// NumSamples counts the float samples and histograms in r.
func (r *Request) NumSamples() int {
	n := 0
	for i := range r.Series {
		n += len(r.Series[i].Samples) + len(r.Series[i].Histograms)
	}
	return n
}

// Decode parses a serialized prompb.WriteRequest into r (after Reset),
// with the same acceptance rules as prompb's generated Unmarshal but
// without copying label strings.
func (r *Request) Decode(b []byte) error {
	r.Reset()
	// Labels and samples are appended to flat arrays and cut into
	// per-series slices at the end, so that growing the arrays never leaves a
	// series pointing at a stale copy.
	i := 0
	for i < len(b) {
		start := i
		num, wt, n, err := tag(b[i:], "WriteRequest")
		if err != nil {
			return err
		}
		i += n
		if num != 1 && num != 3 {
			n, err := skip(b[start:])
			if err != nil {
				return err
			}
			i = start + n
			continue
		}
		if wt != 2 {
			if num == 1 {
				return fmt.Errorf("proto: wrong wireType = %d for field Timeseries", wt)
			}
			return fmt.Errorf("proto: wrong wireType = %d for field Metadata", wt)
		}
		msg, n, err := lengthDelimited(b[i:])
		if err != nil {
			return err
		}
		i += n
		if num == 3 {
			var md prompb.MetricMetadata
			if err := md.Unmarshal(msg); err != nil {
				return err
			}
			continue
		}
		sp := span{l0: len(r.labels), s0: len(r.samples)}
		if len(r.Series) < cap(r.Series) {
			r.Series = r.Series[:len(r.Series)+1]
		} else {
			r.Series = append(r.Series, Series{})
		}
		s := &r.Series[len(r.Series)-1]
		s.Key, s.Labels, s.Samples, s.Histograms, s.Exemplars = nil, nil, nil, s.Histograms[:0], 0
		if err := r.decodeSeries(msg, s); err != nil {
			return err
		}
		sp.l1, sp.s1 = len(r.labels), len(r.samples)
		r.spans = append(r.spans, sp)
	}
	for k := range r.Series {
		r.Series[k].Labels = r.labels[r.spans[k].l0:r.spans[k].l1:r.spans[k].l1]
		r.Series[k].Samples = r.samples[r.spans[k].s0:r.spans[k].s1:r.spans[k].s1]
	}
	return nil
}

func (r *Request) decodeSeries(b []byte, s *Series) error {
	keyStart, keyEnd, contiguous := -1, -1, true
	s.keyBuf = s.keyBuf[:0]
	i := 0
	for i < len(b) {
		start := i
		num, wt, n, err := tag(b[i:], "TimeSeries")
		if err != nil {
			return err
		}
		i += n
		if num < 1 || num > 4 {
			n, err := skip(b[start:])
			if err != nil {
				return err
			}
			i = start + n
			continue
		}
		if wt != 2 {
			return fmt.Errorf("proto: wrong wireType = %d for field %s", wt, [...]string{"", "Labels", "Samples", "Exemplars", "Histograms"}[num])
		}
		msg, n, err := lengthDelimited(b[i:])
		if err != nil {
			return err
		}
		i += n
		switch num {
		case 1:
			var l Label
			if err := decodeLabel(msg, &l); err != nil {
				return err
			}
			r.labels = append(r.labels, l)
			switch {
			case keyStart < 0:
				keyStart, keyEnd = start, i
			case contiguous && keyEnd == start:
				keyEnd = i
			default:
				if contiguous {
					s.keyBuf = append(s.keyBuf, b[keyStart:keyEnd]...)
					contiguous = false
				}
				s.keyBuf = append(s.keyBuf, b[start:i]...)
			}
		case 2:
			var smp prompb.Sample
			if err := decodeSample(msg, &smp); err != nil {
				return err
			}
			r.samples = append(r.samples, smp)
		case 3:
			var ex prompb.Exemplar
			if err := ex.Unmarshal(msg); err != nil {
				return err
			}
			s.Exemplars++
		case 4:
			var h prompb.Histogram
			if err := h.Unmarshal(msg); err != nil {
				return err
			}
			s.Histograms = append(s.Histograms, h)
		}
	}
	if keyStart >= 0 && contiguous {
		s.Key = b[keyStart:keyEnd]
	} else {
		s.Key = s.keyBuf
	}
	return nil
}

func decodeLabel(b []byte, l *Label) error {
	i := 0
	for i < len(b) {
		start := i
		num, wt, n, err := tag(b[i:], "Label")
		if err != nil {
			return err
		}
		i += n
		if num != 1 && num != 2 {
			n, err := skip(b[start:])
			if err != nil {
				return err
			}
			i = start + n
			continue
		}
		if wt != 2 {
			if num == 1 {
				return fmt.Errorf("proto: wrong wireType = %d for field Name", wt)
			}
			return fmt.Errorf("proto: wrong wireType = %d for field Value", wt)
		}
		v, n, err := lengthDelimited(b[i:])
		if err != nil {
			return err
		}
		i += n
		if num == 1 {
			l.Name = v
		} else {
			l.Value = v
		}
	}
	return nil
}

func decodeSample(b []byte, s *prompb.Sample) error {
	i := 0
	for i < len(b) {
		start := i
		num, wt, n, err := tag(b[i:], "Sample")
		if err != nil {
			return err
		}
		i += n
		switch num {
		case 1:
			if wt != 1 {
				return fmt.Errorf("proto: wrong wireType = %d for field Value", wt)
			}
			if i+8 > len(b) {
				return io.ErrUnexpectedEOF
			}
			s.Value = math.Float64frombits(binary.LittleEndian.Uint64(b[i:]))
			i += 8
		case 2:
			if wt != 0 {
				return fmt.Errorf("proto: wrong wireType = %d for field Timestamp", wt)
			}
			v, n, err := varint(b[i:])
			if err != nil {
				return err
			}
			s.Timestamp = int64(v)
			i += n
		default:
			n, err := skip(b[start:])
			if err != nil {
				return err
			}
			i = start + n
		}
	}
	return nil
}

// tag reads a field tag the way gogo-protobuf's generated code does.
func tag(b []byte, msg string) (num int32, wt int, n int, err error) {
	v, n, err := varint(b)
	if err != nil {
		return 0, 0, 0, err
	}
	num, wt = int32(v>>3), int(v&7)
	if wt == 4 {
		return 0, 0, 0, fmt.Errorf("proto: %s: wiretype end group for non-group", msg)
	}
	if num <= 0 {
		return 0, 0, 0, fmt.Errorf("proto: %s: illegal tag %d (wire type %d)", msg, num, v)
	}
	return num, wt, n, nil
}

func varint(b []byte) (uint64, int, error) {
	var v uint64
	for i, shift := 0, uint(0); ; shift += 7 {
		if shift >= 64 {
			return 0, 0, ErrIntOverflow
		}
		if i >= len(b) {
			return 0, 0, io.ErrUnexpectedEOF
		}
		c := b[i]
		i++
		v |= uint64(c&0x7F) << shift
		if c < 0x80 {
			return v, i, nil
		}
	}
}

// lengthDelimited reads a length and returns the bytes it covers and the
// total bytes consumed.
func lengthDelimited(b []byte) ([]byte, int, error) {
	var length int
	i := 0
	for shift := uint(0); ; shift += 7 {
		if shift >= 64 {
			return nil, 0, ErrIntOverflow
		}
		if i >= len(b) {
			return nil, 0, io.ErrUnexpectedEOF
		}
		c := b[i]
		i++
		length |= int(c&0x7F) << shift
		if c < 0x80 {
			break
		}
	}
	if length < 0 {
		return nil, 0, ErrInvalidLength
	}
	end := i + length
	if end < 0 {
		return nil, 0, ErrInvalidLength
	}
	if end > len(b) {
		return nil, 0, io.ErrUnexpectedEOF
	}
	return b[i:end], end, nil
}

// skip returns the length of the field starting at b (tag included), like
// gogo-protobuf's skip functions, groups included.
func skip(b []byte) (int, error) {
	i, depth := 0, 0
	for i < len(b) {
		v, n, err := varint(b[i:])
		if err != nil {
			return 0, err
		}
		i += n
		switch wt := int(v & 7); wt {
		case 0:
			_, n, err := varint(b[i:])
			if err != nil {
				return 0, err
			}
			i += n
		case 1:
			i += 8
		case 2:
			var length int
			for shift := uint(0); ; shift += 7 {
				if shift >= 64 {
					return 0, ErrIntOverflow
				}
				if i >= len(b) {
					return 0, io.ErrUnexpectedEOF
				}
				c := b[i]
				i++
				length |= int(c&0x7F) << shift
				if c < 0x80 {
					break
				}
			}
			if length < 0 {
				return 0, ErrInvalidLength
			}
			i += length
		case 3:
			depth++
		case 4:
			if depth == 0 {
				return 0, errors.New("proto: unexpected end of group")
			}
			depth--
		case 5:
			i += 4
		default:
			return 0, fmt.Errorf("proto: illegal wireType %d", wt)
		}
		if i < 0 {
			return 0, ErrInvalidLength
		}
		if depth == 0 {
			if i > len(b) {
				return 0, io.ErrUnexpectedEOF
			}
			return i, nil
		}
	}
	return 0, io.ErrUnexpectedEOF
}
