package traces

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/klauspost/compress/s2"
	"google.golang.org/protobuf/proto"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// The write-ahead log: one segment per head, records of
// [4 bytes length][4 bytes CRC-32C][payload], the payload S2-compressed:
// uvarint count, then per span its service, instance and encoded span, each
// uvarint-length-prefixed. A segment is removed once a block holds its spans.

var crcTable = crc32.MakeTable(crc32.Castagnoli)

const walHeader = 8

type wal struct {
	dir   string
	fsync bool
	f     *os.File
	seg   int
	size  int64
	raw   []byte
	comp  []byte
}

func segName(dir string, seg int) string { return filepath.Join(dir, fmt.Sprintf("%08d", seg)) }

// walSegments lists the segment numbers in dir, in order.
func walSegments(dir string) ([]int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []int
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil && len(e.Name()) == 8 && !e.IsDir() {
			segs = append(segs, n)
		}
	}
	sort.Ints(segs)
	return segs, nil
}

// openSegment creates segment seg for appending.
func openSegment(dir string, seg int, fsync bool) (*wal, error) {
	f, err := os.OpenFile(segName(dir, seg), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open wal segment: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &wal{dir: dir, fsync: fsync, f: f, seg: seg, size: st.Size()}
	if fsync {
		if err := syncDir(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	return w, nil
}

// write appends one record holding recs and, with fsync, syncs it.
func (w *wal) write(recs []Record) error {
	raw := binary.AppendUvarint(w.raw[:0], uint64(len(recs)))
	for i := range recs {
		r := &recs[i]
		raw = appendString(raw, r.Service)
		raw = appendString(raw, r.Instance)
		raw = binary.AppendUvarint(raw, uint64(len(r.Span)))
		raw = append(raw, r.Span...)
	}
	w.raw = raw
	need := walHeader + s2.MaxEncodedLen(len(raw))
	if cap(w.comp) < need {
		w.comp = make([]byte, need)
	}
	comp := s2.Encode(w.comp[walHeader:need], raw)
	rec := w.comp[:walHeader+len(comp)]
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(comp)))
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(comp, crcTable))
	if _, err := w.f.Write(rec); err != nil {
		return fmt.Errorf("write wal: %w", err)
	}
	w.size += int64(len(rec))
	if w.fsync {
		if err := w.f.Sync(); err != nil {
			return fmt.Errorf("fsync wal: %w", err)
		}
	}
	return nil
}

func (w *wal) close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// replaySegment calls fn with the records of every intact record of a
// segment. A torn or corrupt tail (a crash in the middle of a write) ends
// the replay there and is cut off, so that later appends follow good data.
func replaySegment(path string, log *slog.Logger, fn func([]Record)) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("read wal segment: %w", err)
	}
	off := 0
	for off < len(data) {
		recs, n, err := decodeWALRecord(data[off:])
		if err != nil {
			log.Warn("wal segment has a bad tail; cutting it off", "segment", path, "offset", off, "bytes", len(data)-off, "err", err)
			if err := f.Truncate(int64(off)); err != nil {
				return fmt.Errorf("truncate wal segment: %w", err)
			}
			return nil
		}
		fn(recs)
		off += n
	}
	return nil
}

var errWALRecord = errors.New("bad wal record")

func decodeWALRecord(b []byte) ([]Record, int, error) {
	if len(b) < walHeader {
		return nil, 0, fmt.Errorf("%w: short header", errWALRecord)
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n > len(b)-walHeader {
		return nil, 0, fmt.Errorf("%w: length %d beyond the end", errWALRecord, n)
	}
	comp := b[walHeader : walHeader+n]
	if crc32.Checksum(comp, crcTable) != binary.LittleEndian.Uint32(b[4:]) {
		return nil, 0, fmt.Errorf("%w: checksum mismatch", errWALRecord)
	}
	raw, err := s2.Decode(nil, comp)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", errWALRecord, err)
	}
	recs, err := decodeSpanList(raw)
	if err != nil {
		return nil, 0, err
	}
	return recs, walHeader + n, nil
}

// decodeSpanList reads count, then (service, instance, span) triples.
func decodeSpanList(raw []byte) ([]Record, error) {
	count, i := binary.Uvarint(raw)
	if i <= 0 || count > uint64(len(raw)) {
		return nil, fmt.Errorf("%w: bad count", errWALRecord)
	}
	recs := make([]Record, 0, count)
	for k := uint64(0); k < count; k++ {
		var svc, inst, span []byte
		var err error
		if svc, i, err = readBytes(raw, i); err != nil {
			return nil, err
		}
		if inst, i, err = readBytes(raw, i); err != nil {
			return nil, err
		}
		if span, i, err = readBytes(raw, i); err != nil {
			return nil, err
		}
		r, err := decodeRecord(string(svc), string(inst), span)
		if err != nil {
			return nil, err
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// decodeRecord rebuilds a record from its encoded span.
func decodeRecord(service, instance string, span []byte) (Record, error) {
	var sp tracepb.Span
	if err := proto.Unmarshal(span, &sp); err != nil {
		return Record{}, fmt.Errorf("%w: span: %v", errWALRecord, err)
	}
	r := recordOf(&sp, service, instance)
	r.Span = span
	return r, nil
}

func readBytes(b []byte, i int) ([]byte, int, error) {
	n, k := binary.Uvarint(b[i:])
	if k <= 0 || n > uint64(len(b)-i-k) {
		return nil, 0, fmt.Errorf("%w: bad length", errWALRecord)
	}
	i += k
	return b[i : i+int(n) : i+int(n)], i + int(n), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
