package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// A Queue is an on-disk FIFO of records (remote-write bodies, OTLP
// requests) waiting for the center. It survives a center outage and a
// restart of the prober: records are appended to segment files, and a
// cursor file says how far the center has taken them. Its size is bounded:
// when full, the oldest segment is dropped and its records counted.
//
// A segment file is a sequence of records, each
//
//	length uint32 LE | crc32c(payload) uint32 LE | payload
//
// A torn or corrupt tail (the prober died while writing) is cut off when
// the queue is opened; the records lost that way are counted too.
type Queue struct {
	dir      string
	maxBytes int64

	mu      sync.Mutex
	segs    []*segment // oldest first; the last is being written
	w       *os.File
	cur     cursor
	r       *os.File // open on the cursor's segment
	rseg    uint64
	notify  chan struct{}
	dropped map[string]int64 // records dropped, by reason
	closed  bool
}

type segment struct {
	id      uint64
	size    int64
	records int
}

// cursor is the next record to hand out: segment id, byte offset, and
// index of the record in its segment.
type cursor struct {
	seg uint64
	off int64
	idx int
}

// Position is where a record handed out by Next lies; Commit it once the
// center has it.
type Position struct {
	next cursor
}

const (
	segmentSize    = 1 << 20  // a segment is closed once it reaches this size
	maxRecordSize  = 16 << 20 // bigger records are refused (and, read, corrupt)
	recordHeader   = 8
	cursorFileName = "cursor"
	cursorFileSize = 8 + 8 + 8 + 4
)

// Drop reasons of a Queue, the label reason of imwatch_probe_buffer_dropped_records_total.
const (
	DropFull    = "full"    // the queue was full: the oldest records went
	DropCorrupt = "corrupt" // a record on disk was torn or damaged
	DropRefused = "refused" // the center refused a record as bad (4xx): it is not sent again
)

// ErrEmpty means no record is waiting.
var ErrEmpty = errors.New("queue is empty")

// ErrRecordTooLarge is returned by Append for a record above 16 MiB.
var ErrRecordTooLarge = errors.New("record too large for the buffer")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// OpenQueue opens (or creates) the queue in dir, at most maxBytes on disk.
func OpenQueue(dir string, maxBytes int64) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	q := &Queue{dir: dir, maxBytes: maxBytes, notify: make(chan struct{}, 1), dropped: map[string]int64{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	var ids []uint64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".seg")
		if !ok || e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		s, err := q.scan(id)
		if err != nil {
			return nil, err
		}
		q.segs = append(q.segs, s)
	}
	if err := q.readCursor(); err != nil {
		return nil, err
	}
	// Always write into a fresh segment: the old last one may end in a cut.
	if err := q.rotate(); err != nil {
		return nil, err
	}
	q.enforceLimit()
	return q, nil
}

func (q *Queue) segPath(id uint64) string { return filepath.Join(q.dir, fmt.Sprintf("%016x.seg", id)) }

// scan counts the valid records of a segment and cuts off a bad tail.
func (q *Queue) scan(id uint64) (*segment, error) {
	path := q.segPath(id)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("buffer: %w", err)
	}
	s := &segment{id: id}
	off := 0
	for off < len(data) {
		_, n, err := decodeRecord(data[off:])
		if err != nil {
			q.dropped[DropCorrupt]++ // at least one record lost; the rest of the file is unreadable
			if err := os.Truncate(path, int64(off)); err != nil {
				return nil, fmt.Errorf("buffer: cut corrupt tail of %s: %w", path, err)
			}
			break
		}
		off += n
		s.records++
	}
	s.size = int64(off)
	return s, nil
}

// decodeRecord reads one record from the front of b and returns its payload
// and its length on disk.
func decodeRecord(b []byte) ([]byte, int, error) {
	if len(b) < recordHeader {
		return nil, 0, io.ErrUnexpectedEOF
	}
	n := binary.LittleEndian.Uint32(b)
	if n > maxRecordSize {
		return nil, 0, fmt.Errorf("record length %d is more than %d", n, maxRecordSize)
	}
	if len(b) < recordHeader+int(n) {
		return nil, 0, io.ErrUnexpectedEOF
	}
	payload := b[recordHeader : recordHeader+int(n)]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return nil, 0, errors.New("record checksum mismatch")
	}
	return payload, recordHeader + int(n), nil
}

func encodeRecordHeader(payload []byte) []byte {
	h := make([]byte, recordHeader, recordHeader+len(payload))
	binary.LittleEndian.PutUint32(h, uint32(len(payload)))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(payload, castagnoli))
	return append(h, payload...)
}

func (q *Queue) readCursor() error {
	b, err := os.ReadFile(filepath.Join(q.dir, cursorFileName))
	if errors.Is(err, os.ErrNotExist) {
		q.cur = q.firstCursor()
		return nil
	}
	if err != nil {
		return fmt.Errorf("buffer: %w", err)
	}
	c, err := decodeCursor(b)
	if err != nil {
		// A bad cursor file loses the position, not the records: start at
		// the oldest (the center may see some twice).
		q.cur = q.firstCursor()
		return nil
	}
	q.cur = q.clampCursor(c)
	return nil
}

func decodeCursor(b []byte) (cursor, error) {
	if len(b) != cursorFileSize {
		return cursor{}, fmt.Errorf("cursor file is %d bytes, want %d", len(b), cursorFileSize)
	}
	if crc32.Checksum(b[:24], castagnoli) != binary.LittleEndian.Uint32(b[24:]) {
		return cursor{}, errors.New("cursor checksum mismatch")
	}
	c := cursor{
		seg: binary.LittleEndian.Uint64(b),
		off: int64(binary.LittleEndian.Uint64(b[8:])),
		idx: int(binary.LittleEndian.Uint64(b[16:])),
	}
	if c.off < 0 || c.off > int64(1)<<40 || c.idx < 0 || c.idx > 1<<40 {
		return cursor{}, errors.New("cursor out of range")
	}
	return c, nil
}

func encodeCursor(c cursor) []byte {
	b := make([]byte, cursorFileSize)
	binary.LittleEndian.PutUint64(b, c.seg)
	binary.LittleEndian.PutUint64(b[8:], uint64(c.off))
	binary.LittleEndian.PutUint64(b[16:], uint64(c.idx))
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
	return b
}

func (q *Queue) firstCursor() cursor {
	if len(q.segs) == 0 {
		return cursor{}
	}
	return cursor{seg: q.segs[0].id}
}

// clampCursor makes c point into an existing segment, not past its end.
func (q *Queue) clampCursor(c cursor) cursor {
	for _, s := range q.segs {
		if s.id == c.seg {
			if c.off > s.size || c.idx > s.records {
				return cursor{seg: s.id, off: s.size, idx: s.records}
			}
			return c
		}
		if s.id > c.seg {
			return cursor{seg: s.id}
		}
	}
	if len(q.segs) > 0 {
		last := q.segs[len(q.segs)-1]
		return cursor{seg: last.id, off: last.size, idx: last.records}
	}
	return c
}

func (q *Queue) rotate() error {
	if q.w != nil {
		if err := q.w.Sync(); err != nil {
			return fmt.Errorf("buffer: %w", err)
		}
		q.w.Close()
	}
	var id uint64
	if n := len(q.segs); n > 0 {
		id = q.segs[n-1].id + 1
	} else {
		id = max(q.cur.seg, 1)
	}
	f, err := os.OpenFile(q.segPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("buffer: %w", err)
	}
	q.w = f
	q.segs = append(q.segs, &segment{id: id})
	if len(q.segs) == 1 || q.cur.seg < q.segs[0].id {
		q.cur = q.firstCursor()
	}
	return nil
}

// Append adds a record at the end, dropping the oldest ones if the queue
// is full.
func (q *Queue) Append(payload []byte) error {
	if len(payload) > maxRecordSize {
		return ErrRecordTooLarge
	}
	rec := encodeRecordHeader(payload)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return errors.New("buffer is closed")
	}
	last := q.segs[len(q.segs)-1]
	if last.size > 0 && last.size+int64(len(rec)) > segmentSize {
		if err := q.rotate(); err != nil {
			return err
		}
		last = q.segs[len(q.segs)-1]
	}
	if _, err := q.w.Write(rec); err != nil {
		return fmt.Errorf("buffer: %w", err)
	}
	last.size += int64(len(rec))
	last.records++
	q.enforceLimit()
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return nil
}

// enforceLimit drops the oldest segments while the queue is above its size.
func (q *Queue) enforceLimit() {
	for len(q.segs) > 1 && q.size() > q.maxBytes {
		old := q.segs[0]
		lost := old.records
		if q.cur.seg == old.id {
			lost -= q.cur.idx
		} else if q.cur.seg > old.id {
			lost = 0
		}
		q.dropped[DropFull] += int64(lost)
		q.segs = q.segs[1:]
		if q.r != nil && q.rseg == old.id {
			q.r.Close()
			q.r = nil
		}
		os.Remove(q.segPath(old.id))
		if q.cur.seg <= old.id {
			q.cur = q.firstCursor()
			q.saveCursor()
		}
	}
}

func (q *Queue) size() int64 {
	var n int64
	for _, s := range q.segs {
		n += s.size
	}
	return n
}

// Next returns the oldest record not yet committed, or ErrEmpty.
func (q *Queue) Next() ([]byte, Position, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		i := q.segIndex(q.cur.seg)
		if i < 0 {
			return nil, Position{}, ErrEmpty
		}
		s := q.segs[i]
		if q.cur.off >= s.size {
			if i == len(q.segs)-1 {
				return nil, Position{}, ErrEmpty
			}
			q.cur = cursor{seg: q.segs[i+1].id}
			continue
		}
		if q.r == nil || q.rseg != s.id {
			if q.r != nil {
				q.r.Close()
			}
			f, err := os.Open(q.segPath(s.id))
			if err != nil {
				return nil, Position{}, fmt.Errorf("buffer: %w", err)
			}
			q.r, q.rseg = f, s.id
		}
		var hdr [recordHeader]byte
		if _, err := q.r.ReadAt(hdr[:], q.cur.off); err != nil {
			return q.skipCorrupt(s)
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n > maxRecordSize || q.cur.off+recordHeader+int64(n) > s.size {
			return q.skipCorrupt(s)
		}
		buf := make([]byte, recordHeader+int(n))
		if _, err := q.r.ReadAt(buf, q.cur.off); err != nil {
			return q.skipCorrupt(s)
		}
		payload, used, err := decodeRecord(buf)
		if err != nil {
			return q.skipCorrupt(s)
		}
		return payload, Position{next: cursor{seg: s.id, off: q.cur.off + int64(used), idx: q.cur.idx + 1}}, nil
	}
}

// skipCorrupt gives up the rest of a damaged segment.
func (q *Queue) skipCorrupt(s *segment) ([]byte, Position, error) {
	q.dropped[DropCorrupt] += int64(max(s.records-q.cur.idx, 1))
	q.cur = cursor{seg: s.id, off: s.size, idx: s.records}
	q.saveCursor()
	return nil, Position{}, ErrEmpty
}

func (q *Queue) segIndex(id uint64) int {
	for i, s := range q.segs {
		if s.id == id {
			return i
		}
	}
	return -1
}

// Commit marks everything up to p as taken: it is not handed out again,
// not even after a restart, and fully taken segments are deleted.
func (q *Queue) Commit(p Position) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.segIndex(p.next.seg) < 0 || p.next.seg < q.cur.seg || (p.next.seg == q.cur.seg && p.next.off < q.cur.off) {
		return // the segment was dropped meanwhile (queue full)
	}
	q.cur = p.next
	for len(q.segs) > 1 && q.segs[0].id < q.cur.seg {
		old := q.segs[0]
		q.segs = q.segs[1:]
		if q.r != nil && q.rseg == old.id {
			q.r.Close()
			q.r = nil
		}
		os.Remove(q.segPath(old.id))
	}
	q.saveCursor()
}

// Drop gives up the record at p (the center refused it) and counts it.
func (q *Queue) Drop(p Position, reason string) {
	q.Commit(p)
	q.mu.Lock()
	q.dropped[reason]++
	q.mu.Unlock()
}

func (q *Queue) saveCursor() {
	tmp := filepath.Join(q.dir, cursorFileName+".tmp")
	if err := os.WriteFile(tmp, encodeCursor(q.cur), 0o600); err != nil {
		return // the position is kept in memory; at worst records are sent twice after a restart
	}
	_ = os.Rename(tmp, filepath.Join(q.dir, cursorFileName))
}

// Notify receives a value after an Append.
func (q *Queue) Notify() <-chan struct{} { return q.notify }

// Stats are a queue's size and what it dropped.
type Stats struct {
	Bytes   int64
	Pending int
	Dropped map[string]int64
}

// Stats reports the bytes on disk, the records waiting and the records dropped.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := Stats{Bytes: q.size(), Dropped: map[string]int64{}}
	for _, s := range q.segs {
		switch {
		case s.id == q.cur.seg:
			st.Pending += s.records - q.cur.idx
		case s.id > q.cur.seg:
			st.Pending += s.records
		}
	}
	for k, v := range q.dropped {
		st.Dropped[k] = v
	}
	return st
}

// Sync makes what was appended durable.
func (q *Queue) Sync() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	return q.w.Sync()
}

// Close syncs and closes the queue.
func (q *Queue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	err := q.w.Sync()
	q.w.Close()
	if q.r != nil {
		q.r.Close()
	}
	q.saveCursor()
	return err
}
