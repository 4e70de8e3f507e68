package traces

import (
	"bytes"
	"cmp"
	"slices"
	"sync"
	"time"
)

// head holds the spans of one WAL segment in memory, indexed, until they are
// written into a block.
type head struct {
	mu      sync.RWMutex
	seg     int
	created time.Time
	chunks  [][]Record          // the spans, in chunks (no copying as it grows)
	n       int                 // spans held
	traces  map[TraceID][]int32 // indexes into the chunks
	msg     map[string][]TraceID
	user    map[string][]TraceID
	strs    map[string]string // interned services, instances, names
	bytes   int
	minT    int64
	maxT    int64
}

const headChunk = 8192

// newHead makes a head for segment seg, its maps sized like prev's (the
// head before it, or nil), which saves growing them span by span.
func newHead(seg int, prev *head) *head {
	nt, nm, nu := 0, 0, 0
	if prev != nil {
		prev.mu.RLock()
		nt, nm, nu = len(prev.traces), len(prev.msg), len(prev.user)
		prev.mu.RUnlock()
	}
	return &head{
		seg: seg, created: time.Now(),
		traces: make(map[TraceID][]int32, nt), msg: make(map[string][]TraceID, nm), user: make(map[string][]TraceID, nu), strs: map[string]string{},
	}
}

func (h *head) rec(i int32) *Record { return &h.chunks[i/headChunk][i%headChunk] }

func (h *head) intern(s string) string {
	if v, ok := h.strs[s]; ok {
		return v
	}
	if len(h.strs) < 1<<16 {
		h.strs[s] = s
	}
	return s
}

func (h *head) add(recs []Record) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range recs {
		r := recs[i]
		r.Service, r.Instance, r.Name = h.intern(r.Service), h.intern(r.Instance), h.intern(r.Name)
		idx := int32(h.n)
		if h.n%headChunk == 0 {
			h.chunks = append(h.chunks, make([]Record, 0, headChunk))
		}
		c := &h.chunks[len(h.chunks)-1]
		*c = append(*c, r)
		h.n++
		h.traces[r.TraceID] = append(h.traces[r.TraceID], idx)
		if r.MsgID != "" {
			h.msg[r.MsgID] = appendUnique(h.msg[r.MsgID], r.TraceID)
		}
		for _, u := range r.Users {
			h.user[u] = appendUnique(h.user[u], r.TraceID)
		}
		h.bytes += len(r.Span)
		if h.minT == 0 || r.Start < h.minT {
			h.minT = r.Start
		}
		if r.End > h.maxT {
			h.maxT = r.End
		}
	}
}

func appendUnique(ids []TraceID, id TraceID) []TraceID {
	for _, x := range ids {
		if x == id {
			return ids
		}
	}
	return append(ids, id)
}

func (h *head) len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.n
}

func (h *head) trace(id TraceID, out []Record) []Record {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, i := range h.traces[id] {
		out = append(out, *h.rec(i))
	}
	return out
}

// search adds the head's matching traces to top.
func (h *head) search(q *Query, top *topTraces) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var cands []TraceID
	switch {
	case q.MsgID != "" && q.User != "":
		users := h.user[q.User]
		for _, id := range h.msg[q.MsgID] {
			for _, u := range users {
				if u == id {
					cands = append(cands, id)
				}
			}
		}
	case q.MsgID != "":
		cands = h.msg[q.MsgID]
	case q.User != "":
		cands = h.user[q.User]
	default:
		for id, idx := range h.traces {
			h.consider(q, top, id, idx)
		}
		return
	}
	for _, id := range cands {
		h.consider(q, top, id, h.traces[id])
	}
}

func (h *head) consider(q *Query, top *topTraces, id TraceID, idx []int32) {
	start, end := int64(1<<63-1), int64(0)
	hit := !q.spanLevel()
	for _, i := range idx {
		r := h.rec(i)
		start, end = min(start, r.Start), max(end, r.End)
		if !hit && q.spanMatches(r.Service, r.Name, r.End-r.Start, r.Error) {
			hit = true
		}
	}
	if hit && q.overlaps(start, end) {
		top.add(TraceRef{ID: id, Start: start})
	}
}

// topTraces keeps the newest traces added, at most limit of them in the
// end, each with the earliest start seen (a trace may be spread over the
// head and several blocks).
type topTraces struct {
	limit int
	m     map[TraceID]int64
}

func newTop(limit int) *topTraces { return &topTraces{limit: limit, m: map[TraceID]int64{}} }

func (t *topTraces) add(r TraceRef) {
	if s, ok := t.m[r.ID]; ok && s <= r.Start {
		return
	}
	t.m[r.ID] = r.Start
	if len(t.m) >= 4*t.limit+64 {
		t.prune(t.limit)
	}
}

func (t *topTraces) prune(n int) []TraceRef {
	refs := make([]TraceRef, 0, len(t.m))
	for id, s := range t.m {
		refs = append(refs, TraceRef{ID: id, Start: s})
	}
	slices.SortFunc(refs, func(a, b TraceRef) int {
		if a.Start != b.Start {
			return cmp.Compare(b.Start, a.Start)
		}
		return bytes.Compare(a.ID[:], b.ID[:])
	})
	if len(refs) > n {
		refs = refs[:n]
	}
	clear(t.m)
	for _, r := range refs {
		t.m[r.ID] = r.Start
	}
	return refs
}

func (t *topTraces) result() []TraceRef { return t.prune(t.limit) }

// floor is the start a trace needs to make it into the result once limit
// traces are in; ok is false before that.
func (t *topTraces) floor() (int64, bool) {
	if len(t.m) < t.limit {
		return 0, false
	}
	refs := t.prune(t.limit)
	return refs[len(refs)-1].Start, true
}
