package main

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// msgID makes a message id the way nuid (the logic node's) does, 22
// base-62 digits: a random prefix of 12, renewed every 100,000 ids here,
// and a sequence of 10 with random increments; seeded, so that every run
// and every design gets the same ids.
func (g *gen) msgID() string {
	if g.n%100_000 == 1 || g.prefix == nil {
		g.prefix = make([]byte, 12)
		for i := range g.prefix {
			g.prefix[i] = base62[g.rnd.IntN(62)]
		}
	}
	g.seq += 33 + int64(g.rnd.IntN(300))
	b := append(make([]byte, 0, 22), g.prefix...)
	for i, s := 0, g.seq; i < 10; i++ {
		b = append(b, base62[s%62])
		s /= 62
	}
	return string(b)
}

// gen makes the traces of IM messages as the instrumented reference IM
// sends them: eight spans per message (client send, gateway receive, logic
// handle, store append, gateway push, client receive, client ack, logic
// ack) with the attributes of CONTRACTS.md, random trace and span ids and
// server message ids shaped like the logic node's (nuid).
type gen struct {
	rnd    *rand.Rand
	users  int
	now    time.Time
	n      int
	prefix []byte
	seq    int64
}

func newGen(seed uint64, users int) *gen {
	return &gen{rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), users: users, now: time.Now().Add(-time.Hour)}
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func num(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

func boolKV(k string, v bool) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: v}}}
}

type message struct {
	traceID [16]byte
	msgID   string
}

// request makes one export request holding the traces of msgs messages,
// grouped by resource as an SDK's batch of several processes would not be:
// each span gets the resource of its service instance.
func (g *gen) request(msgs int, out *[]message) *coltracepb.ExportTraceServiceRequest {
	res := map[string]*tracepb.ResourceSpans{}
	var order []string
	add := func(service, instance string, sp *tracepb.Span) {
		k := service + "/" + instance
		rs := res[k]
		if rs == nil {
			rs = &tracepb.ResourceSpans{
				Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", service), str("service.instance.id", instance), str("telemetry.sdk.language", "go")}},
				ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "github.com/imwatch/imwatch/pkg/imtrace"}}},
			}
			res[k] = rs
			order = append(order, k)
		}
		rs.ScopeSpans[0].Spans = append(rs.ScopeSpans[0].Spans, sp)
	}
	for m := 0; m < msgs; m++ {
		g.n++
		var tid [16]byte
		binary.LittleEndian.PutUint64(tid[:], g.rnd.Uint64())
		binary.LittleEndian.PutUint64(tid[8:], g.rnd.Uint64())
		msgID := g.msgID()
		if out != nil {
			*out = append(*out, message{tid, msgID})
		}
		from, to := g.rnd.IntN(g.users), g.rnd.IntN(g.users)
		sender, recipient := fmt.Sprintf("user%d", from), fmt.Sprintf("user%d", to)
		conv := fmt.Sprintf("c-%d-%d", min(from, to), max(from, to))
		seq := int64(g.n/3 + 1)
		t0 := g.now.Add(time.Duration(g.n) * 20 * time.Microsecond)
		at := func(us int) uint64 {
			return uint64(t0.Add(time.Duration(us+g.rnd.IntN(50)) * time.Microsecond).UnixNano())
		}
		ids := make([][]byte, 8)
		for i := range ids {
			ids[i] = make([]byte, 8)
			binary.LittleEndian.PutUint64(ids[i], g.rnd.Uint64()|1)
		}
		span := func(i, parent int, name string, kind tracepb.Span_SpanKind, start, end int, attrs ...*commonpb.KeyValue) *tracepb.Span {
			sp := &tracepb.Span{TraceId: tid[:], SpanId: ids[i], Name: name, Kind: kind, StartTimeUnixNano: at(start), Attributes: attrs, Flags: 0x301}
			sp.EndTimeUnixNano = sp.StartTimeUnixNano + uint64(end-start)*1000 + uint64(g.rnd.IntN(900))
			if parent >= 0 {
				sp.ParentSpanId = ids[parent]
			}
			return sp
		}
		gw1, gw2, logic := fmt.Sprintf("gw-%d", from%2+1), fmt.Sprintf("gw-%d", to%2+1), "logic-1"
		add("imwatch-client", sender+"/phone", span(0, -1, "im.client.send", tracepb.Span_SPAN_KIND_PRODUCER, 0, 900,
			str("messaging.system", "imwatch"), str("messaging.message.conversation_id", conv), str("messaging.destination.name", recipient),
			str("imwatch.user", sender), str("imwatch.client_msg_id", fmt.Sprintf("%016x", g.rnd.Uint64())), boolKV("imwatch.probe", false)))
		add("imwatch-gateway", gw1, span(1, 0, "im.gateway.receive", tracepb.Span_SPAN_KIND_CONSUMER, 80, 160,
			str("messaging.system", "imwatch"), str("messaging.message.conversation_id", conv), str("imwatch.user", sender)))
		add("imwatch-logic", logic, span(2, 1, "im.logic.handle", tracepb.Span_SPAN_KIND_CONSUMER, 200, 700,
			str("messaging.system", "imwatch"), str("messaging.message.id", msgID), str("messaging.message.conversation_id", conv),
			num("imwatch.seq", seq), num("messaging.batch.message_count", 1), str("imwatch.user", sender)))
		add("imwatch-logic", logic, span(3, 2, "im.store.append", tracepb.Span_SPAN_KIND_CLIENT, 250, 600,
			str("messaging.message.id", msgID), num("imwatch.seq", seq)))
		add("imwatch-gateway", gw2, span(4, 2, "im.gateway.push", tracepb.Span_SPAN_KIND_CONSUMER, 720, 800,
			str("messaging.message.id", msgID), str("imwatch.recipient", recipient)))
		add("imwatch-client", recipient+"/laptop", span(5, 4, "im.client.receive", tracepb.Span_SPAN_KIND_CONSUMER, 850, 900,
			str("messaging.message.id", msgID), str("imwatch.recipient", recipient), num("imwatch.seq", seq)))
		add("imwatch-client", recipient+"/laptop", span(6, 5, "im.client.ack", tracepb.Span_SPAN_KIND_PRODUCER, 900, 920,
			str("messaging.message.id", msgID)))
		add("imwatch-logic", logic, span(7, 6, "im.logic.ack", tracepb.Span_SPAN_KIND_CONSUMER, 1000, 1100,
			str("messaging.message.id", msgID), str("imwatch.recipient", recipient)))
	}
	req := &coltracepb.ExportTraceServiceRequest{}
	for _, k := range order {
		req.ResourceSpans = append(req.ResourceSpans, res[k])
	}
	return req
}
