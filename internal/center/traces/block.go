package traces

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"slices"
	"sort"
	"syscall"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// A block is an immutable file of the spans of one head, grouped by trace:
//
//	magic "IMWTRB1\n"
//	chunks       zstd frames of trace records (the spans of one trace, each
//	             uvarint service, uvarint instance, uvarint length, encoded span)
//	traces       sorted by trace id, 52 bytes each: id, chunk, offset and
//	             length in the decompressed chunk, start, end, span-table
//	             offset, span count
//	chunk table  12 bytes each: file offset, compressed length
//	span table   per trace, per span: uvarint operation<<1|error, uvarint µs
//	postings     sorted, 12 bytes each: xxhash of kind+value, trace ordinal
//	             (kinds: message id, user)
//	dictionary   services, instances, operations (service, name)
//	footer       section offsets and counts, time range, WAL segment, CRC
//
// Every section but the chunks is fixed-size or addressed by offset, so a
// block is read through mmap without loading it.

const (
	blockMagic   = "IMWTRB1\n"
	footerMagic  = "IMWB"
	footerSize   = 96
	traceEntry   = 52
	chunkEntry   = 12
	postingEntry = 12
	chunkTarget  = 128 << 10
)

var (
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(64<<20))
)

const (
	postMsg  = 'm'
	postUser = 'u'
)

// postingKey is the key of value v of a kind in the postings: its hash,
// told apart by kind.
func postingKey(kind byte, v string) uint64 {
	return xxhash.Sum64String(v) ^ uint64(kind)*0x9e3779b97f4a7c15
}

// blockMeta is what the footer says.
type blockMeta struct {
	tracesOff, chunksOff, tabOff, postOff, dictOff, dictEnd uint64
	nTraces, nChunks, nPost, walSeg                         uint32
	minT, maxT                                              int64
	nSpans                                                  uint64
}

// writeBlock writes the spans of h into path (through a temporary file,
// fsynced and renamed) and returns its size.
func writeBlock(path string, h *head) (int64, error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ids := make([]TraceID, 0, len(h.traces))
	for id := range h.traces {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b TraceID) int { return bytes.Compare(a[:], b[:]) })

	svcs, insts, ops := dict{}, dict{}, dict{}
	var opList [][2]uint32 // service id, name id
	names := dict{}
	opID := func(svc uint32, name string) uint32 {
		n := names.id(name)
		k := fmt.Sprintf("%d\x00%d", svc, n)
		id, isNew := ops.add(k)
		if isNew {
			opList = append(opList, [2]uint32{svc, n})
		}
		return id
	}

	var file bytes.Buffer
	file.WriteString(blockMagic)
	var chunkTab, traceTab, tab, chunk []byte
	type post struct {
		key uint64
		ord uint32
	}
	var posts []post
	nChunks := 0
	flush := func() {
		if len(chunk) == 0 {
			return
		}
		off := file.Len()
		c := zenc.EncodeAll(chunk, nil)
		file.Write(c)
		chunkTab = binary.LittleEndian.AppendUint64(chunkTab, uint64(off))
		chunkTab = binary.LittleEndian.AppendUint32(chunkTab, uint32(len(c)))
		chunk = chunk[:0]
		nChunks++
	}
	var nSpans uint64
	for ord, id := range ids {
		idx := slices.Clone(h.traces[id]) // readers of the head use the original
		slices.SortFunc(idx, func(a, b int32) int { return cmp.Compare(h.rec(a).Start, h.rec(b).Start) })
		if len(chunk) >= chunkTarget {
			flush()
		}
		off := len(chunk)
		tabOff := len(tab)
		start, end := int64(1<<63-1), int64(0)
		for _, i := range idx {
			r := h.rec(i)
			s := svcs.id(r.Service)
			chunk = binary.AppendUvarint(chunk, uint64(s))
			chunk = binary.AppendUvarint(chunk, uint64(insts.id(r.Instance)))
			chunk = binary.AppendUvarint(chunk, uint64(len(r.Span)))
			chunk = append(chunk, r.Span...)
			e := uint64(opID(s, r.Name)) << 1
			if r.Error {
				e |= 1
			}
			tab = binary.AppendUvarint(tab, e)
			tab = binary.AppendUvarint(tab, uint64((r.End-r.Start)/1000))
			start, end = min(start, r.Start), max(end, r.End)
			if r.MsgID != "" {
				posts = append(posts, post{postingKey(postMsg, r.MsgID), uint32(ord)})
			}
			for _, u := range r.Users {
				posts = append(posts, post{postingKey(postUser, u), uint32(ord)})
			}
			nSpans++
		}
		traceTab = append(traceTab, id[:]...)
		traceTab = binary.LittleEndian.AppendUint32(traceTab, uint32(nChunks))
		traceTab = binary.LittleEndian.AppendUint32(traceTab, uint32(off))
		traceTab = binary.LittleEndian.AppendUint32(traceTab, uint32(len(chunk)-off))
		traceTab = binary.LittleEndian.AppendUint64(traceTab, uint64(start))
		traceTab = binary.LittleEndian.AppendUint64(traceTab, uint64(end))
		traceTab = binary.LittleEndian.AppendUint32(traceTab, uint32(tabOff))
		traceTab = binary.LittleEndian.AppendUint32(traceTab, uint32(len(idx)))
	}
	flush()
	slices.SortFunc(posts, func(a, b post) int {
		if c := cmp.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.ord, b.ord)
	})
	posts = slices.Compact(posts)

	var m blockMeta
	m.tracesOff = uint64(file.Len())
	file.Write(traceTab)
	m.chunksOff = uint64(file.Len())
	file.Write(chunkTab)
	m.tabOff = uint64(file.Len())
	file.Write(tab)
	m.postOff = uint64(file.Len())
	var pb [postingEntry]byte
	for _, p := range posts {
		binary.LittleEndian.PutUint64(pb[:], p.key)
		binary.LittleEndian.PutUint32(pb[8:], p.ord)
		file.Write(pb[:])
	}
	m.dictOff = uint64(file.Len())
	var d []byte
	d = svcs.appendTo(d)
	d = insts.appendTo(d)
	d = names.appendTo(d)
	d = binary.AppendUvarint(d, uint64(len(opList)))
	for _, o := range opList {
		d = binary.AppendUvarint(d, uint64(o[0]))
		d = binary.AppendUvarint(d, uint64(o[1]))
	}
	file.Write(d)
	m.dictEnd = uint64(file.Len())
	m.nTraces, m.nChunks, m.nPost, m.walSeg = uint32(len(ids)), uint32(nChunks), uint32(len(posts)), uint32(h.seg)
	m.minT, m.maxT, m.nSpans = h.minT, h.maxT, nSpans
	b := file.Bytes()
	file.Write(m.footer(b[m.tracesOff:m.dictEnd]))

	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return 0, fmt.Errorf("create block: %w", err)
	}
	if _, err := f.Write(file.Bytes()); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, fmt.Errorf("write block: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return 0, fmt.Errorf("fsync block: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("rename block: %w", err)
	}
	return int64(file.Len()), nil
}

func (m *blockMeta) footer(index []byte) []byte {
	f := make([]byte, 0, footerSize)
	for _, v := range []uint64{m.tracesOff, m.chunksOff, m.tabOff, m.postOff, m.dictOff, m.dictEnd} {
		f = binary.LittleEndian.AppendUint64(f, v)
	}
	for _, v := range []uint32{m.nTraces, m.nChunks, m.nPost, m.walSeg} {
		f = binary.LittleEndian.AppendUint32(f, v)
	}
	f = binary.LittleEndian.AppendUint64(f, uint64(m.minT))
	f = binary.LittleEndian.AppendUint64(f, uint64(m.maxT))
	f = binary.LittleEndian.AppendUint64(f, m.nSpans)
	c := crc32.New(crcTable)
	c.Write(index)
	c.Write(f)
	f = binary.LittleEndian.AppendUint32(f, c.Sum32())
	return append(f, footerMagic...)
}

// dict numbers strings in the order they are first seen.
type dict struct {
	m    map[string]uint32
	list []string
}

func (d *dict) add(s string) (uint32, bool) {
	if d.m == nil {
		d.m = map[string]uint32{}
	}
	if id, ok := d.m[s]; ok {
		return id, false
	}
	id := uint32(len(d.list))
	d.m[s] = id
	d.list = append(d.list, s)
	return id, true
}

func (d *dict) id(s string) uint32 { id, _ := d.add(s); return id }

func (d *dict) appendTo(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(d.list)))
	for _, s := range d.list {
		b = appendString(b, s)
	}
	return b
}

// block is an open block file, mmapped.
type block struct {
	path  string
	data  []byte
	meta  blockMeta
	size  int64
	svcs  []string
	insts []string
	names []string
	ops   [][2]uint32
	// svcOps[s] lists the operations of service s, for skipping blocks.
	svcIndex map[string]uint32
}

var errBlock = errors.New("bad trace block")

func openBlock(path string) (*block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < int64(len(blockMagic)+footerSize) {
		return nil, fmt.Errorf("%w %s: %d bytes is too short", errBlock, path, size)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	b := &block{path: path, data: data, size: size}
	if err := b.parse(); err != nil {
		_ = syscall.Munmap(data)
		return nil, fmt.Errorf("%w %s: %v", errBlock, path, err)
	}
	return b, nil
}

func (b *block) parse() error {
	d := b.data
	if string(d[:len(blockMagic)]) != blockMagic || string(d[len(d)-4:]) != footerMagic {
		return errors.New("no block magic")
	}
	f := d[len(d)-footerSize:]
	m := &b.meta
	u64 := func(i int) uint64 { return binary.LittleEndian.Uint64(f[i:]) }
	u32 := func(i int) uint32 { return binary.LittleEndian.Uint32(f[i:]) }
	m.tracesOff, m.chunksOff, m.tabOff, m.postOff, m.dictOff, m.dictEnd = u64(0), u64(8), u64(16), u64(24), u64(32), u64(40)
	m.nTraces, m.nChunks, m.nPost, m.walSeg = u32(48), u32(52), u32(56), u32(60)
	m.minT, m.maxT, m.nSpans = int64(u64(64)), int64(u64(72)), u64(80)
	end := uint64(len(d) - footerSize)
	if !(uint64(len(blockMagic)) <= m.tracesOff && m.tracesOff <= m.chunksOff && m.chunksOff <= m.tabOff &&
		m.tabOff <= m.postOff && m.postOff <= m.dictOff && m.dictOff <= m.dictEnd && m.dictEnd == end) ||
		m.chunksOff-m.tracesOff != uint64(m.nTraces)*traceEntry || m.tabOff-m.chunksOff != uint64(m.nChunks)*chunkEntry ||
		m.dictOff-m.postOff != uint64(m.nPost)*postingEntry {
		return errors.New("footer sections do not fit")
	}
	c := crc32.New(crcTable)
	c.Write(d[m.tracesOff:m.dictEnd])
	c.Write(f[:88])
	if c.Sum32() != u32(88) {
		return errors.New("index checksum mismatch")
	}
	dd := d[m.dictOff:m.dictEnd]
	var err error
	i := 0
	if b.svcs, i, err = readStrings(dd, i); err != nil {
		return err
	}
	if b.insts, i, err = readStrings(dd, i); err != nil {
		return err
	}
	if b.names, i, err = readStrings(dd, i); err != nil {
		return err
	}
	n, k := binary.Uvarint(dd[i:])
	if k <= 0 || n > uint64(len(dd)) {
		return errors.New("bad dictionary")
	}
	i += k
	for j := uint64(0); j < n; j++ {
		s, k1 := binary.Uvarint(dd[i:])
		if k1 <= 0 {
			return errors.New("bad dictionary")
		}
		nm, k2 := binary.Uvarint(dd[i+k1:])
		if k2 <= 0 || s >= uint64(len(b.svcs)) || nm >= uint64(len(b.names)) {
			return errors.New("bad dictionary")
		}
		i += k1 + k2
		b.ops = append(b.ops, [2]uint32{uint32(s), uint32(nm)})
	}
	b.svcIndex = map[string]uint32{}
	for i, s := range b.svcs {
		b.svcIndex[s] = uint32(i)
	}
	return nil
}

func readStrings(b []byte, i int) ([]string, int, error) {
	n, k := binary.Uvarint(b[i:])
	if k <= 0 || n > uint64(len(b)) {
		return nil, 0, errors.New("bad dictionary")
	}
	i += k
	out := make([]string, 0, n)
	for j := uint64(0); j < n; j++ {
		s, next, err := readBytes(b, i)
		if err != nil {
			return nil, 0, errors.New("bad dictionary")
		}
		out = append(out, string(s))
		i = next
	}
	return out, i, nil
}

func (b *block) close() error { return syscall.Munmap(b.data) }

type traceEntryT struct {
	id            TraceID
	chunk, off, n uint32
	start, end    int64
	tabOff, spans uint32
}

func (b *block) entry(ord int) traceEntryT {
	e := b.data[b.meta.tracesOff+uint64(ord)*traceEntry:]
	var t traceEntryT
	copy(t.id[:], e[:16])
	t.chunk = binary.LittleEndian.Uint32(e[16:])
	t.off = binary.LittleEndian.Uint32(e[20:])
	t.n = binary.LittleEndian.Uint32(e[24:])
	t.start = int64(binary.LittleEndian.Uint64(e[28:]))
	t.end = int64(binary.LittleEndian.Uint64(e[36:]))
	t.tabOff = binary.LittleEndian.Uint32(e[44:])
	t.spans = binary.LittleEndian.Uint32(e[48:])
	return t
}

func (b *block) traceID(ord int) []byte {
	o := b.meta.tracesOff + uint64(ord)*traceEntry
	return b.data[o : o+16]
}

// find returns the ordinal of trace id, or -1.
func (b *block) find(id TraceID) int {
	n := int(b.meta.nTraces)
	i := sort.Search(n, func(i int) bool { return bytes.Compare(b.traceID(i), id[:]) >= 0 })
	if i < n && bytes.Equal(b.traceID(i), id[:]) {
		return i
	}
	return -1
}

// chunk decompresses chunk c.
func (b *block) chunk(c uint32) ([]byte, error) {
	if c >= b.meta.nChunks {
		return nil, fmt.Errorf("%w %s: chunk %d of %d", errBlock, b.path, c, b.meta.nChunks)
	}
	e := b.data[b.meta.chunksOff+uint64(c)*chunkEntry:]
	off, n := binary.LittleEndian.Uint64(e), uint64(binary.LittleEndian.Uint32(e[8:]))
	if off+n > b.meta.tracesOff {
		return nil, fmt.Errorf("%w %s: chunk %d out of bounds", errBlock, b.path, c)
	}
	out, err := zdec.DecodeAll(b.data[off:off+n], nil)
	if err != nil {
		return nil, fmt.Errorf("%w %s: chunk %d: %v", errBlock, b.path, c, err)
	}
	return out, nil
}

// trace appends the spans of trace id held by the block to out.
func (b *block) trace(id TraceID, out []Record) ([]Record, error) {
	ord := b.find(id)
	if ord < 0 {
		return out, nil
	}
	e := b.entry(ord)
	c, err := b.chunk(e.chunk)
	if err != nil {
		return out, err
	}
	if uint64(e.off)+uint64(e.n) > uint64(len(c)) {
		return out, fmt.Errorf("%w %s: trace %s out of its chunk", errBlock, b.path, id)
	}
	rec := c[e.off : e.off+e.n]
	for i := 0; i < len(rec); {
		s, k1 := binary.Uvarint(rec[i:])
		if k1 <= 0 {
			return out, fmt.Errorf("%w %s: trace %s: bad span entry", errBlock, b.path, id)
		}
		in, k2 := binary.Uvarint(rec[i+k1:])
		if k2 <= 0 || s >= uint64(len(b.svcs)) || in >= uint64(len(b.insts)) {
			return out, fmt.Errorf("%w %s: trace %s: bad span entry", errBlock, b.path, id)
		}
		span, next, err := readBytes(rec, i+k1+k2)
		if err != nil {
			return out, fmt.Errorf("%w %s: trace %s: %v", errBlock, b.path, id, err)
		}
		r, err := decodeRecord(b.svcs[s], b.insts[in], span)
		if err != nil {
			return out, fmt.Errorf("%w %s: trace %s: %v", errBlock, b.path, id, err)
		}
		out = append(out, r)
		i = next
	}
	return out, nil
}

// postings returns the ordinals of the traces with the posting key.
func (b *block) postings(key uint64) []uint32 {
	n := int(b.meta.nPost)
	at := func(i int) []byte { return b.data[b.meta.postOff+uint64(i)*postingEntry:] }
	i := sort.Search(n, func(i int) bool { return binary.LittleEndian.Uint64(at(i)) >= key })
	var out []uint32
	for ; i < n; i++ {
		e := at(i)
		if binary.LittleEndian.Uint64(e) != key {
			break
		}
		out = append(out, binary.LittleEndian.Uint32(e[8:]))
	}
	return out
}

// search adds the block's matching traces to top. Postings are by hash:
// a trace found by message id or user is checked against its spans (by
// the caller, who reads the trace).
func (b *block) search(q *Query, top *topTraces) {
	if !q.Start.IsZero() && b.meta.maxT < q.Start.UnixNano() {
		return
	}
	if !q.End.IsZero() && b.meta.minT > q.End.UnixNano() {
		return
	}
	svc := -1
	if q.Service != "" {
		s, ok := b.svcIndex[q.Service]
		if !ok {
			return
		}
		svc = int(s)
	}
	consider := func(ord int) {
		e := b.entry(ord)
		if !q.overlaps(e.start, e.end) {
			return
		}
		if q.spanLevel() && !b.spanHit(q, e, svc) {
			return
		}
		top.add(TraceRef{ID: e.id, Start: e.start})
	}
	var cands []uint32
	switch {
	case q.MsgID != "" && q.User != "":
		users := b.postings(postingKey(postUser, q.User))
		for _, o := range b.postings(postingKey(postMsg, q.MsgID)) {
			if slices.Contains(users, o) {
				cands = append(cands, o)
			}
		}
	case q.MsgID != "":
		cands = b.postings(postingKey(postMsg, q.MsgID))
	case q.User != "":
		cands = b.postings(postingKey(postUser, q.User))
	default:
		for ord := 0; ord < int(b.meta.nTraces); ord++ {
			consider(ord)
		}
		return
	}
	for _, o := range cands {
		if o < b.meta.nTraces {
			consider(int(o))
		}
	}
}

func (b *block) spanHit(q *Query, e traceEntryT, svc int) bool {
	tab := b.data[b.meta.tabOff:b.meta.postOff]
	i := int(e.tabOff)
	for k := uint32(0); k < e.spans && i < len(tab); k++ {
		op, n1 := binary.Uvarint(tab[i:])
		if n1 <= 0 {
			return false
		}
		us, n2 := binary.Uvarint(tab[i+n1:])
		if n2 <= 0 {
			return false
		}
		i += n1 + n2
		o := op >> 1
		if o >= uint64(len(b.ops)) {
			return false
		}
		s, nm := b.ops[o][0], b.ops[o][1]
		if svc >= 0 && int(s) != svc {
			continue
		}
		if q.spanMatches(b.svcs[s], b.names[nm], int64(us)*1000, op&1 == 1) {
			return true
		}
	}
	return false
}
