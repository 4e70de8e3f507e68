// Package wiretest checks the hand-written jsonwire codecs against
// encoding/json by reflection: Filled gives a struct with every exported
// field set, so that a field added to a wire struct but not to its encoder
// or decoder makes a test fail instead of being dropped silently.
package wiretest

import (
	"fmt"
	"reflect"
)

// Filled returns a *T whose exported fields, nested structs, slice elements
// and map entries included, are all set to values distinct per field: strings
// are the field's path (made to need JSON escaping), numbers count up,
// booleans are true.
func Filled[T any]() *T { return filled[T](true) }

// Plain is Filled with strings that need no escaping in JSON ("Type-2"),
// which the fast decoders take without falling back to encoding/json.
func Plain[T any]() *T { return filled[T](false) }

func filled[T any](escape bool) *T {
	v := new(T)
	f := filler{escape: escape}
	f.fill(reflect.ValueOf(v).Elem(), "")
	return v
}

type filler struct {
	n      int
	escape bool
}

func (f *filler) fill(v reflect.Value, path string) {
	f.n++
	n := &f.n
	switch v.Kind() {
	case reflect.String:
		if f.escape {
			v.SetString(fmt.Sprintf("%s<%d>é", path, *n))
		} else {
			v.SetString(fmt.Sprintf("%s-%d", path, *n))
		}
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(*n) * 1000003)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(*n) * 1000033)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(*n) + 0.5)
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).IsExported() {
				f.fill(v.Field(i), path+"."+t.Field(i).Name)
			}
		}
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := 0; i < 2; i++ {
			f.fill(s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for i := 0; i < 2; i++ {
			k := reflect.New(v.Type().Key()).Elem()
			f.fill(k, fmt.Sprintf("%s{k%d}", path, i))
			e := reflect.New(v.Type().Elem()).Elem()
			f.fill(e, fmt.Sprintf("%s{v%d}", path, i))
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		f.fill(p.Elem(), path)
		v.Set(p)
	default:
		panic(fmt.Sprintf("wiretest: field %s of kind %s: teach Filled to set it", path, v.Kind()))
	}
}

// Unset lists the exported fields of v (a struct, or a pointer to one)
// still at their zero value, nested structs included: a Filled value
// decoded by a hand-written decoder that dropped a field shows it here.
func Unset(v any) []string {
	var out []string
	unset(reflect.Indirect(reflect.ValueOf(v)), "", &out)
	return out
}

func unset(v reflect.Value, path string, out *[]string) {
	if v.Kind() == reflect.Struct {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).IsExported() {
				unset(v.Field(i), path+"."+t.Field(i).Name, out)
			}
		}
		return
	}
	if v.IsZero() {
		*out = append(*out, path)
	}
}
