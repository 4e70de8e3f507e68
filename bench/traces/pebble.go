package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable/block"

	"github.com/imwatch/imwatch/internal/center/traces"
)

// pebbleStore is the peer design: the spans and their indexes as keys of
// Pebble (CockroachDB's LSM key-value store), zstd-compressed sstables,
// every batch committed with Sync (fsync of Pebble's WAL).
//
//	s | trace id | span id        -> uvarint service, instance, span lengths and bytes
//	m | xxhash(message id) | trace id -> ""
//	u | xxhash(user) | trace id       -> ""
//
// It answers Trace and the message id and user searches, which is what the
// comparison measures; other searches would need more indexes.
type pebbleStore struct {
	db *pebble.DB
}

func openPebble(dir string) (*pebbleStore, error) {
	opts := &pebble.Options{}
	opts.EnsureDefaults()
	for i := range opts.Levels {
		opts.Levels[i].Compression = func() *block.CompressionProfile { return block.ZstdCompression }
	}
	opts.Logger = quietLogger{}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, err
	}
	return &pebbleStore{db: db}, nil
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(f string, a ...any) {
	panic(fmt.Sprintf(f, a...))
}

func hashKey(prefix byte, v string, id traces.TraceID) []byte {
	k := make([]byte, 0, 25)
	k = append(k, prefix)
	k = binary.BigEndian.AppendUint64(k, xxhash.Sum64String(v))
	return append(k, id[:]...)
}

func (p *pebbleStore) Append(recs []traces.Record) error {
	b := p.db.NewBatch()
	defer b.Close()
	for i := range recs {
		r := &recs[i]
		k := make([]byte, 0, 25)
		k = append(k, 's')
		k = append(k, r.TraceID[:]...)
		k = append(k, r.SpanID[:]...)
		v := binary.AppendUvarint(nil, uint64(len(r.Service)))
		v = append(v, r.Service...)
		v = binary.AppendUvarint(v, uint64(len(r.Instance)))
		v = append(v, r.Instance...)
		v = append(v, r.Span...)
		if err := b.Set(k, v, nil); err != nil {
			return err
		}
		if r.MsgID != "" {
			if err := b.Set(hashKey('m', r.MsgID, r.TraceID), nil, nil); err != nil {
				return err
			}
		}
		for _, u := range r.Users {
			if err := b.Set(hashKey('u', u, r.TraceID), nil, nil); err != nil {
				return err
			}
		}
	}
	return b.Commit(pebble.Sync)
}

func (p *pebbleStore) Trace(id traces.TraceID) ([]traces.Record, error) {
	lo := append([]byte{'s'}, id[:]...)
	hi := append([]byte{'s'}, id[:]...)
	hi = append(hi, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []traces.Record
	for it.First(); it.Valid(); it.Next() {
		v := it.Value()
		n, k := binary.Uvarint(v)
		if k <= 0 {
			return nil, errors.New("bad value")
		}
		svc := string(v[k : k+int(n)])
		v = v[k+int(n):]
		n, k = binary.Uvarint(v)
		inst := string(v[k : k+int(n)])
		span := append([]byte(nil), v[k+int(n):]...)
		r := traces.Record{Service: svc, Instance: inst, Span: span}
		copy(r.TraceID[:], id[:])
		copy(r.SpanID[:], it.Key()[17:])
		out = append(out, r)
	}
	return out, it.Error()
}

func (p *pebbleStore) Search(q traces.Query) ([]traces.TraceRef, error) {
	var prefix []byte
	switch {
	case q.MsgID != "":
		prefix = hashKey('m', q.MsgID, traces.TraceID{})[:9]
	case q.User != "":
		prefix = hashKey('u', q.User, traces.TraceID{})[:9]
	default:
		return nil, errors.New("the pebble peer answers message id and user searches only")
	}
	hi := append(append([]byte(nil), prefix...), bytes.Repeat([]byte{0xff}, 17)...)
	it, err := p.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []traces.TraceRef
	for it.First(); it.Valid() && len(out) < q.Limit; it.Next() {
		var r traces.TraceRef
		copy(r.ID[:], it.Key()[9:])
		out = append(out, r)
	}
	return out, it.Error()
}

// Flush writes the memtable into sstables and compacts everything, so that
// the size on disk is the settled one.
func (p *pebbleStore) Flush() error {
	if err := p.db.Flush(); err != nil {
		return err
	}
	return p.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true)
}

func (p *pebbleStore) Close() error { return p.db.Close() }
