package imtrace

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Message is what a hop span says about the message it carries; empty
// fields (and a zero Seq or Recipients) are left out of the span.
type Message struct {
	ID         string // server message id: messaging.message.id
	ClientID   string // the sender's client message id: imwatch.client_msg_id
	Conv       string // conversation id: messaging.message.conversation_id
	Dest       string // where this hop sends it (subject, gateway, user): messaging.destination.name
	User       string // sender user: imwatch.user
	Recipient  string // recipient user of this hop: imwatch.recipient
	Seq        uint64 // per-conversation sequence: imwatch.seq
	Recipients int    // recipient count: messaging.batch.message_count
	Attempt    int    // a push's attempt, 1 for the first (2 and more are redeliveries): imwatch.attempt
	Probe      bool   // a probe message, always sampled: imwatch.probe
}

// Why an unsampled span was exported after all: the value of imwatch.kept.
const (
	KeyKept  = attribute.Key("imwatch.kept")
	KeptErr  = "error"
	KeptSlow = "slow"
)

// spanData is everything a hop span holds until it ends; an unsampled span's
// copy of it waits in the tail buffer. The attributes are built from it only
// when the span is exported, so a span that never is builds none.
//
// It is kept small, 272 bytes (2 MB less in a full default tail ring than
// before; no faster per span, docs/benchmarks.md): the parent is its span id
// and flags (the trace is the span's own), an error's details are behind a
// pointer (a failed span is rare and exported anyway), the small fields are
// bytes.
type spanData struct {
	name    string
	sc      trace.SpanContext
	parent  trace.SpanID // zero: a root span
	start   int64        // monotonic clock, nanoseconds (monoNow)
	end     int64
	msg     Message
	links   []trace.Link
	err     *spanError // nil: not failed
	kind    uint8      // trace.SpanKind
	pflags  trace.TraceFlags
	premote bool
	kept    uint8 // keptNone, keptErr, keptSlow: why an unsampled span was exported
}

// spanError is what a failed span says about its error.
type spanError struct {
	errType   string // error.type, for SetErrorCode
	msg       string // the status message, and the exception's message
	excpType  string // exception.type, for SetError
	hasExcept bool
}

const (
	keptNone = iota
	keptErr
	keptSlow
)

// parentContext is the span's parent as a SpanContext: same trace.
func (d *spanData) parentContext() trace.SpanContext {
	if !d.parent.IsValid() {
		return trace.SpanContext{}
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: d.sc.TraceID(), SpanID: d.parent,
		TraceFlags: d.pflags, TraceState: d.sc.TraceState(), Remote: d.premote})
}

// Span is one hop's span. It is a small handle: keep it in a variable (or
// start it into a struct field with StartInto), do not copy it, and call End
// once; after End only SpanContext, Sampled, Context, Traceparent and Inject
// answer. The zero Span (and every span of a nil or disabled Tracer) records
// nothing; its SpanContext is the parent's and Inject leaves carriers alone.
type Span struct {
	t       *Tracer
	r       *record   // a sampled span's record, handed to the exporter at End
	d       *spanData // what the span records: &r.d, or a pooled spanData for the tail buffer; nil: nothing
	sc      trace.SpanContext
	sampled bool
	ended   bool
}

// Start begins a hop span named name (one of the Span* names) as a child of
// parent, the context read from the frame or header (Parse, ParseHeader) or
// another span's SpanContext; an invalid parent starts a new trace. The
// sampling decision is made here, once (see the package doc). The span's
// start time is read from the clock; StartAt takes one the hop has read.
func (t *Tracer) Start(parent trace.SpanContext, name string, kind trace.SpanKind, m Message) (s Span) {
	t.start(&s, parent, name, kind, &m, nil, time.Time{})
	return s
}

// StartAt is Start at a start time the hop has already read from the clock
// (time.Now(), with its monotonic reading) for its own metrics, so that the
// span reads none. A zero at reads the clock.
func (t *Tracer) StartAt(parent trace.SpanContext, name string, kind trace.SpanKind, m Message, at time.Time) (s Span) {
	t.start(&s, parent, name, kind, &m, nil, at)
	return s
}

// StartLinked is Start with links to other spans: a push that a group
// fan-out starts links to the span that fanned out (FanoutLink). links is
// kept, not copied: do not change it afterwards.
func (t *Tracer) StartLinked(parent trace.SpanContext, name string, kind trace.SpanKind, m Message, links []trace.Link) (s Span) {
	t.start(&s, parent, name, kind, &m, links, time.Time{})
	return s
}

// StartLinkedAt is StartLinked at a start time the hop has read (StartAt).
func (t *Tracer) StartLinkedAt(parent trace.SpanContext, name string, kind trace.SpanKind, m Message, links []trace.Link, at time.Time) (s Span) {
	t.start(&s, parent, name, kind, &m, links, at)
	return s
}

// StartInto is Start writing the span into *s, which must be the zero Span:
// for a span kept in a struct of the caller's (a request waiting for its
// answer).
func (t *Tracer) StartInto(s *Span, parent trace.SpanContext, name string, kind trace.SpanKind, m Message) {
	t.start(s, parent, name, kind, &m, nil, time.Time{})
}

// start fills the caller's result in place. A span that records (sampled,
// or unsampled with the tail part on) writes its data once, into the pooled
// record it is exported with or the pooled spanData the tail buffer keeps,
// so that neither is copied again at End.
func (t *Tracer) start(s *Span, parent trace.SpanContext, name string, kind trace.SpanKind, m *Message, links []trace.Link, at time.Time) {
	if t == nil || t.paused.Load() {
		s.sc = parent
		return
	}
	valid := parent.IsValid()
	if valid && !t.tailOn && !m.Probe && !parent.IsSampled() {
		// Head sampling only, and the trace not sampled: the span would
		// record nothing, so it takes no id of its own and passes its
		// parent's context on, as a hop without tracing does. A later hop
		// that exports a span of the trace after all (a process with the
		// tail part on) then has a parent that is exported, and this hop
		// shows as the untraced gap it is, rather than as a parent that
		// never arrives.
		t.stats.unsampled.add(parent.TraceID())
		s.t = t
		s.sc = parent
		return
	}
	var scc trace.SpanContextConfig
	if valid {
		scc.TraceID = parent.TraceID()
		scc.TraceState = parent.TraceState()
	} else {
		scc.TraceID = newTraceID()
		parent = trace.SpanContext{}
	}
	scc.SpanID = newSpanID()
	s.t = t
	switch { // Tracer.sampled, without checking the parent twice
	case m.Probe:
		s.sampled = true
	case valid:
		s.sampled = parent.IsSampled()
	default:
		s.sampled = t.sampled(parent, scc.TraceID, name, kind, false)
	}
	var d *spanData
	switch {
	case s.sampled:
		scc.TraceFlags = trace.FlagsSampled
		t.stats.sampled.add(scc.TraceID)
		s.r = t.newRecord()
		d = &s.r.d
	case !t.tailOn:
		// Head sampling only: the span records nothing but the context it
		// passes on. (With the tail part on, the tail buffer counts the
		// unsampled spans under the lock it takes anyway.)
		t.stats.unsampled.add(scc.TraceID)
		s.sc = trace.NewSpanContext(scc)
		return
	default:
		d = dataPool.Get().(*spanData)
	}
	// Field by field: assigning a whole spanData to the heap costs a bulk
	// copy with write barriers; a pooled one may hold an old span's error.
	d.sc = trace.NewSpanContext(scc)
	d.parent = parent.SpanID()
	d.pflags = parent.TraceFlags()
	d.premote = parent.IsRemote()
	d.name = name
	d.kind = uint8(kind)
	d.msg = *m
	d.links = links
	d.start = monoAt(at)
	d.err = nil
	d.kept = keptNone
	s.d = d
	s.sc = d.sc
}

// dataPool holds the spanData of unsampled spans: a span takes one at start,
// the tail buffer keeps it, and the span it pushes out of the buffer gives
// its own back. Start overwrites every field, so a pooled one is not cleared
// (what it still references is a few strings of an old message).
var dataPool = sync.Pool{New: func() any { return new(spanData) }}

// Ids come from math/rand/v2's per-thread ChaCha8 generator: random enough
// for trace ids (the ratio sampler reads their low 63 bits), and unlike the
// SDK's generator it takes no lock.
func newTraceID() (id trace.TraceID) {
	for !id.IsValid() {
		binary.BigEndian.PutUint64(id[:8], rand.Uint64())
		binary.BigEndian.PutUint64(id[8:], rand.Uint64())
	}
	return id
}

func newSpanID() (id trace.SpanID) {
	v := rand.Uint64()
	for v == 0 {
		v = rand.Uint64()
	}
	binary.BigEndian.PutUint64(id[:], v)
	return id
}

// FanoutLink is the link a push started by a group fan-out carries to the
// span that fanned out: its context and the fan-out width.
func FanoutLink(from trace.SpanContext, recipients int) trace.Link {
	return trace.Link{SpanContext: from, Attributes: []attribute.KeyValue{KeyRecipientCount.Int(recipients)}}
}

// SpanContext is the span's context, the parent of the next hop; for a span
// that records nothing it is the parent's.
func (s *Span) SpanContext() trace.SpanContext { return s.sc }

// Sampled reports whether the span was sampled at start.
func (s *Span) Sampled() bool { return s.sampled }

// SetStored fills in what a hop learns once the message is stored: the
// server message id, its conversation (unchanged when conv is "") and its
// sequence. The span's attributes are taken from its Message when it is
// exported; before End only.
func (s *Span) SetStored(id, conv string, seq uint64) {
	if s.d == nil {
		return
	}
	m := &s.d.msg
	m.ID, m.Seq = id, seq
	if conv != "" {
		m.Conv = conv
	}
}

// Context returns ctx carrying the span's context, as parent for spans of
// other OpenTelemetry instrumentation (Provider's tracers).
func (s *Span) Context(ctx context.Context) context.Context {
	if !s.sc.IsValid() {
		return ctx
	}
	return trace.ContextWithSpanContext(ctx, s.sc)
}

// Traceparent is the span's W3C traceparent for the next hop, or "" when the
// span has no valid context. An unsampled span whose trace this process has
// already promoted says "sampled", so that the next hops keep theirs.
func (s *Span) Traceparent() string {
	sc := s.sc
	if s.t != nil && !s.sampled && s.t.tailOn {
		now := int64(-1) // after End: the clock. A span's start will do: the window is seconds long
		if s.d != nil {
			now = s.d.start
		}
		if s.t.tail.isPromoted(sc.TraceID(), now) {
			sc = sc.WithTraceFlags(sc.TraceFlags() | trace.FlagsSampled)
		}
	}
	return Format(sc)
}

// Inject writes the span's trace context into a carrier: Field(&f.Trace) for
// a frame, HeaderCarrier(m.Header) for NATS. When tracing is off it writes
// nothing, so the carrier keeps the traceparent the hop received.
func (s *Span) Inject(c propagation.TextMapCarrier) {
	if s.t == nil || !s.sc.IsValid() {
		return
	}
	c.Set(HeaderTraceparent, s.Traceparent())
	if ts := s.sc.TraceState(); ts.Len() > 0 {
		c.Set(HeaderTracestate, ts.String())
	}
}

// SetError marks the span failed: status Error with err's text and an
// exception event, as the OpenTelemetry conventions record errors. A failed
// span is always exported, with every span of its trace in this process.
// Before End only.
func (s *Span) SetError(err error) {
	if err == nil || s.d == nil {
		return
	}
	e := s.d.failure()
	e.msg, e.hasExcept, e.excpType = err.Error(), true, errorType(err)
}

// SetErrorCode marks the span failed with an IM error code (error.type) and a
// message; no exception event, since no Go error was raised. Before End only.
func (s *Span) SetErrorCode(code, msg string) {
	if s.d == nil {
		return
	}
	e := s.d.failure()
	e.errType, e.msg = code, msg
}

// failure is the span's error details, made at the first SetError or
// SetErrorCode: the two add to each other (the later message wins).
func (d *spanData) failure() *spanError {
	if d.err == nil {
		d.err = new(spanError)
	}
	return d.err
}

func errorType(err error) string {
	t := reflect.TypeOf(err)
	if t.PkgPath() == "" && t.Name() == "" {
		return t.String() // e.g. *errors.errorString
	}
	return t.PkgPath() + "." + t.Name()
}

// End ends the span now, reading the clock (EndAt takes a time the hop has
// read). A sampled span goes to the exporter; an unsampled one into the tail
// buffer, unless it failed or was slow: then it and the buffered spans of
// its trace are exported. Calls after the first do nothing.
func (s *Span) End() { s.EndAt(time.Time{}) }

// EndAt is End at an end time the hop has already read from the clock
// (StartAt), so that the span reads none; a zero at reads the clock. An end
// before the span's start is taken as its start.
func (s *Span) EndAt(at time.Time) {
	if s.t == nil || s.ended {
		return
	}
	s.ended = true
	d := s.d
	if d == nil {
		return // head sampling only: an unsampled span is not recorded
	}
	s.d = nil
	t := s.t
	d.end = max(monoAt(at), d.start)
	if s.sampled {
		r := s.r
		s.r = nil
		t.exportRecord(r)
		return
	}
	// d is the tail's from here: put keeps it, or promote exports and
	// recycles it.
	slow := t.slow >= 0 && d.end-d.start >= t.slow
	if d.err == nil && !slow {
		if t.tail.put(d) {
			t.promote(d) // its trace was promoted before
		}
		return
	}
	if !t.mayPromote(d.end) {
		// Over the budget: an unsampled span like the others (kept whole
		// only if its trace was promoted already).
		t.stats.promRefused.Add(1)
		if t.tail.put(d) {
			t.promote(d)
		}
		return
	}
	d.kept = keptSlow
	if d.err != nil {
		d.kept = keptErr
	}
	for _, b := range t.tail.promote(d.sc.TraceID(), d.end) {
		t.promote(b)
	}
	t.promote(d)
}

// promote exports the unsampled span d after all, and gives d back to its
// pool.
func (t *Tracer) promote(d *spanData) {
	t.stats.promoted.Add(1)
	d.sc = d.sc.WithTraceFlags(d.sc.TraceFlags() | trace.FlagsSampled)
	r := t.newRecord()
	r.d = *d
	dataPool.Put(d)
	t.exportRecord(r)
}

// newRecord is a record to fill: pooled when the pipeline gives records
// back after export, new when a Config.Processor may keep them.
func (t *Tracer) newRecord() *record {
	if t.recycle {
		return recordPool.Get().(*record)
	}
	return new(record)
}

func (t *Tracer) exportRecord(r *record) {
	if t.closed.Load() {
		if t.recycle {
			r.release()
		}
		return
	}
	r.ReadOnlySpan = baseSpan
	r.t = t
	r.shared = !t.ownPipeline
	t.out.OnEnd(r)
}

// maxAttrs is the most attributes build sets: system, operation type, the
// ten Message fields, error.type and imwatch.kept.
const maxAttrs = 14

// record is a hop span as the SDK's processors and exporters see it: an
// sdktrace.ReadOnlySpan made directly, without the SDK's span machinery,
// so that a sampled span costs one pooled record and no copies. Its
// attributes, event and wall-clock times are built from d when a processor
// or the exporter first asks for them, which the batch processor does on
// its own goroutine, not the hop's.
type record struct {
	// base is a real SDK span: the interface has an unexported method, and
	// methods added to it in later SDK versions answer with base's (empty)
	// values instead of panicking.
	sdktrace.ReadOnlySpan

	t      *Tracer
	d      spanData
	built  atomic.Bool
	shared bool       // readers may come concurrently: build under mu
	mu     sync.Mutex // held while building a shared record
	start  time.Time
	end    time.Time
	attrs  [maxAttrs]attribute.KeyValue
	nattrs int
	links  []sdktrace.Link
	event  [1]sdktrace.Event
	evAttr [2]attribute.KeyValue
	nevent int
}

// ready builds what the record's readers see, once. The package's own
// pipeline hands each record to one export call, on one goroutine, so only
// a record given to a Config.Processor, whose readers may be several and
// concurrent, needs the lock.
func (r *record) ready() *record {
	if r.built.Load() {
		return r
	}
	if !r.shared {
		r.build()
		r.built.Store(true)
		return r
	}
	r.mu.Lock()
	if !r.built.Load() {
		r.build()
		r.built.Store(true)
	}
	r.mu.Unlock()
	return r
}

func (r *record) build() {
	d := &r.d
	r.start, r.end = wallTime(d.start), wallTime(d.end)
	r.nattrs = len(d.appendAttrs(r.attrs[:0]))
	r.links = r.links[:0]
	for _, l := range d.links {
		if !l.SpanContext.IsValid() {
			continue // a link to nothing says nothing
		}
		r.links = append(r.links, sdktrace.Link{SpanContext: l.SpanContext, Attributes: l.Attributes})
	}
	r.nevent = 0
	if d.err != nil && d.err.hasExcept {
		r.nevent = len(d.exceptionEvent(r.event[:0], &r.evAttr, r.end))
	}
}

// appendAttrs appends the span's attributes to a, which has room for
// maxAttrs: the record's array, or the exporter's on its stack.
func (d *spanData) appendAttrs(a []attribute.KeyValue) []attribute.KeyValue {
	a = append(a, systemAttr)
	if op, ok := operationType(trace.SpanKind(d.kind)); ok {
		a = append(a, op)
	}
	m := &d.msg
	for _, f := range [...]struct {
		k attribute.Key
		v string
	}{{KeyMessageID, m.ID}, {KeyClientMsgID, m.ClientID}, {KeyConversationID, m.Conv},
		{KeyDestination, m.Dest}, {KeyUser, m.User}, {KeyRecipient, m.Recipient}} {
		if f.v != "" {
			a = append(a, f.k.String(f.v))
		}
	}
	if m.Seq != 0 {
		a = append(a, KeySeq.Int64(int64(m.Seq)))
	}
	if m.Recipients != 0 {
		a = append(a, KeyRecipientCount.Int(m.Recipients))
	}
	if m.Attempt != 0 {
		a = append(a, KeyAttempt.Int(m.Attempt))
	}
	a = append(a, KeyProbe.Bool(m.Probe))
	if d.err != nil && d.err.errType != "" {
		a = append(a, KeyErrorType.String(d.err.errType))
	}
	switch d.kept {
	case keptErr:
		a = append(a, KeyKept.String(KeptErr))
	case keptSlow:
		a = append(a, KeyKept.String(KeptSlow))
	}
	return a
}

// exceptionEvent appends the exception event of a span failed by SetError,
// its attributes in *attrs, at end.
func (d *spanData) exceptionEvent(ev []sdktrace.Event, attrs *[2]attribute.KeyValue, end time.Time) []sdktrace.Event {
	attrs[0] = semconv.ExceptionTypeKey.String(d.err.excpType)
	attrs[1] = semconv.ExceptionMessageKey.String(d.err.msg)
	return append(ev, sdktrace.Event{Name: semconv.ExceptionEventName, Attributes: attrs[:], Time: end})
}

// release clears the references the record holds and pools it.
func (r *record) release() {
	r.d = spanData{}
	if r.built.Load() {
		clear(r.attrs[:r.nattrs])
		clear(r.links)
		r.event[0] = sdktrace.Event{}
		r.nattrs, r.nevent = 0, 0
		r.built.Store(false)
	}
	r.t = nil
	recordPool.Put(r)
}

var (
	opSend    = semconv.MessagingOperationTypeSend
	opProcess = semconv.MessagingOperationTypeProcess
)

// operationType is messaging.operation.type from the span kind: a producer
// or client hop sends, a consumer or server hop processes.
func operationType(k trace.SpanKind) (attribute.KeyValue, bool) {
	switch k {
	case trace.SpanKindProducer, trace.SpanKindClient:
		return opSend, true
	case trace.SpanKindConsumer, trace.SpanKindServer:
		return opProcess, true
	}
	return attribute.KeyValue{}, false
}

func (r *record) Name() string                     { return r.d.name }
func (r *record) SpanContext() trace.SpanContext   { return r.d.sc }
func (r *record) Parent() trace.SpanContext        { return r.d.parentContext() }
func (r *record) SpanKind() trace.SpanKind         { return trace.SpanKind(r.d.kind) }
func (r *record) StartTime() time.Time             { return r.ready().start }
func (r *record) EndTime() time.Time               { return r.ready().end }
func (r *record) Attributes() []attribute.KeyValue { r.ready(); return r.attrs[:r.nattrs:r.nattrs] }
func (r *record) Links() []sdktrace.Link           { return r.ready().links }
func (r *record) Events() []sdktrace.Event         { r.ready(); return r.event[:r.nevent:r.nevent] }
func (r *record) InstrumentationScope() instrumentation.Scope {
	return r.t.scope
}

//nolint:staticcheck // part of sdktrace.ReadOnlySpan
func (r *record) InstrumentationLibrary() instrumentation.Library { return r.t.scope }
func (r *record) Resource() *resource.Resource                    { return r.t.res }
func (r *record) DroppedAttributes() int                          { return 0 }
func (r *record) DroppedLinks() int                               { return 0 }
func (r *record) DroppedEvents() int                              { return 0 }
func (r *record) ChildSpanCount() int                             { return 0 }
func (r *record) Status() sdktrace.Status {
	if r.d.err != nil {
		return sdktrace.Status{Code: codes.Error, Description: r.d.err.msg}
	}
	return sdktrace.Status{Code: codes.Unset}
}

// baseSpan is one real ended SDK span, embedded in every record.
var baseSpan = func() sdktrace.ReadOnlySpan {
	var c captureProcessor
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(&c))
	_, s := tp.Tracer(ScopeName).Start(context.Background(), "base")
	s.End()
	return c.span
}()

type captureProcessor struct{ span sdktrace.ReadOnlySpan }

func (c *captureProcessor) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (c *captureProcessor) OnEnd(s sdktrace.ReadOnlySpan)                   { c.span = s }
func (c *captureProcessor) Shutdown(context.Context) error                  { return nil }
func (c *captureProcessor) ForceFlush(context.Context) error                { return nil }
