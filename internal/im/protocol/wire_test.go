package protocol_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/imwatch/imwatch/internal/im/jsonwire/wiretest"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// TestCodecCoversEveryField fills every exported field of Frame by
// reflection: AppendFrame must write what encoding/json writes, and the
// fast decoder must read every field back. A field added to Frame but not
// to the hand-written codec fails here instead of vanishing on the wire.
func TestCodecCoversEveryField(t *testing.T) {
	full := wiretest.Filled[protocol.Frame]()
	noLists := *full
	noLists.After, noLists.Members = nil, nil // the fast decoder leaves these to encoding/json
	for _, tc := range []struct {
		name string
		f    protocol.Frame
	}{{"every field", *full}, {"every scalar field", noLists}, {"zero", protocol.Frame{}}} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := json.Marshal(tc.f)
			if err != nil {
				t.Fatal(err)
			}
			got := protocol.AppendFrame(nil, &tc.f)
			if !bytes.Equal(got, want) {
				t.Fatalf("AppendFrame\n got %s\nwant %s", got, want)
			}
			back, err := protocol.DecodeServerFrame(want)
			if tc.f.Type == "" {
				return // no type: refused, rightly
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, tc.f) {
				t.Fatalf("decoded %+v\nwant    %+v", back, tc.f)
			}
		})
	}
	plain := wiretest.Plain[protocol.Frame]()
	plain.After, plain.Members = nil, nil
	var fast protocol.Frame
	data, _ := json.Marshal(plain)
	if !protocol.DecodeFrameFast(data, &fast) {
		t.Fatalf("the fast decoder did not take %s: a field it does not know?", data)
	}
	if !reflect.DeepEqual(fast, *plain) {
		t.Fatalf("the fast decoder read %+v\nwant %+v (unset: %v)", fast, *plain, wiretest.Unset(&fast))
	}
}
