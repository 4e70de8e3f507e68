package logic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/fault"
	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/immetrics"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"
)

const (
	headerSeq     = "Im-Seq" // per-conversation sequence of a stored message
	maxConvCache  = 200000
	storeAttempts = 8
	storeTimeout  = 5 * time.Second
)

// convState is what this node last knew of a conversation's tail. Another node
// may have appended since: JetStream's expected-last-subject-sequence check
// catches that and the state is reloaded.
type convState struct {
	mu            sync.Mutex
	loaded        bool
	lastStreamSeq uint64
	lastSeq       uint64
}

func (l *Logic) conv(id string) *convState {
	l.convMu.Lock()
	defer l.convMu.Unlock()
	cs := l.convs[id]
	if cs == nil {
		if len(l.convs) >= maxConvCache {
			for k, v := range l.convs { // evict idle entries; a miss costs one reload
				if v.mu.TryLock() {
					delete(l.convs, k)
					v.mu.Unlock()
				}
				if len(l.convs) < maxConvCache/2 {
					break
				}
			}
		}
		cs = &convState{}
		l.convs[id] = cs
	}
	return cs
}

func (l *Logic) handleSend(m *nats.Msg) {
	var req bus.SendRequest
	if err := bus.DecodeSendRequest(m.Data, &req); err != nil {
		replyJSON(m, bus.SendReply{Code: protocol.CodeBadRequest, Error: "malformed send request"})
		return
	}
	if req.Trace == "" {
		req.Trace = m.Header.Get(bus.HeaderTrace)
	}
	parent := imtrace.ParseHeader(m.Header)
	if !parent.IsValid() {
		parent = imtrace.Parse(req.Trace)
	}
	h := l.tr.Start(parent, imtrace.SpanLogicHandle, trace.SpanKindServer, imtrace.Message{
		ClientID: req.ID, User: req.From, Recipient: req.To, Probe: req.Probe})
	// A fault holds or drops the request inside its span, so that a dropped
	// message's trace ends at this hop.
	if d := l.cfg.Faults.Hold(fault.HopLogicHandle); d.Drop {
		h.SetErrorCode(fault.ErrorType, d.DropMessage(fault.HopLogicHandle))
		h.End()
		return // no answer: the gateway times the send out
	}
	l.m.Request("send")
	reply := l.send(req, &h)
	if reply.Code != "" {
		l.m.Fail("send", reply.Code)
		h.SetErrorCode(reply.Code, reply.Error)
	} else if !reply.Dup {
		l.m.Message(immetrics.Kind(req.Group), immetrics.StageStored, 1)
	}
	if m.Reply != "" {
		_ = m.Respond(bus.AppendSendReply(make([]byte, 0, 128), &reply))
	}
	h.SetStored(reply.MsgID, reply.Conv, reply.Seq)
	h.End()
}

// send stores the message of req; h is its im.logic.handle span, the parent
// of the store's span.
func (l *Logic) send(req bus.SendRequest, h *imtrace.Span) bus.SendReply {
	if !protocol.ValidUser(req.From) || !protocol.ValidUser(req.Device) || !protocol.ValidID(req.ID) || len(req.Body) > protocol.MaxBodyBytes {
		return bus.SendReply{Code: protocol.CodeBadRequest, Error: "send request has invalid fields"}
	}
	var conv string
	switch {
	case req.To != "" && req.Group == "" && protocol.ValidUser(req.To):
		conv = protocol.DirectConv(req.From, req.To)
	case req.Group != "" && req.To == "" && protocol.ValidUser(req.Group):
		if _, ok := l.lookupGroup(req.Group); !ok {
			return bus.SendReply{Code: protocol.CodeNoSuchGroup, Error: "no group " + req.Group}
		}
		if !l.dir.isMember(req.Group, req.From) {
			return bus.SendReply{Code: protocol.CodeNotMember, Error: "you are not a member of group " + req.Group}
		}
		conv = protocol.GroupConv(req.Group)
	default:
		return bus.SendReply{Code: protocol.CodeBadRequest, Error: "send needs exactly one valid to or group"}
	}
	// The stored message carries the append's context: the pushes, one per
	// recipient gateway, hang below it.
	st := l.tr.Start(h.SpanContext(), imtrace.SpanStoreAppend, trace.SpanKindProducer, imtrace.Message{
		Conv: conv, Dest: bus.StreamMsgs, User: req.From, Recipient: req.To, Probe: req.Probe})
	sm := bus.StoredMessage{
		MsgID:      nuid.Next(),
		Conv:       conv,
		From:       req.From,
		FromDevice: req.Device,
		Group:      req.Group,
		Body:       req.Body,
		Probe:      req.Probe,
		Trace:      req.Trace,
		RecvNS:     req.RecvNS,
	}
	st.Inject(imtrace.Field(&sm.Trace))
	if d := l.cfg.Faults.Hold(fault.HopStoreAppend); d.Drop { // a fault: the store refuses, as a failed append does
		st.SetErrorCode(fault.ErrorType, d.DropMessage(fault.HopStoreAppend))
		st.End()
		return bus.SendReply{Code: protocol.CodeUnavailable, Error: "message could not be stored; retry"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	stored, dup, err := l.store(ctx, sm, req.From+"/"+req.ID)
	st.SetStored(stored.MsgID, "", stored.Seq)
	st.SetError(err)
	st.End()
	if err != nil {
		l.log.Warn("store failed", "conv", conv, "err", err)
		return bus.SendReply{Code: protocol.CodeUnavailable, Error: "message could not be stored; retry"}
	}
	return bus.SendReply{MsgID: stored.MsgID, Conv: stored.Conv, Seq: stored.Seq, TS: stored.TS, Dup: dup}
}

// store appends sm to its conversation with the next sequence. dedupID makes a
// resend of the same client message return the first one instead.
func (l *Logic) store(ctx context.Context, sm bus.StoredMessage, dedupID string) (bus.StoredMessage, bool, error) {
	cs := l.conv(sm.Conv)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	subj := bus.MsgSubject(sm.Conv)
	for attempt := 0; attempt < storeAttempts; attempt++ {
		if !cs.loaded {
			if err := l.loadConv(ctx, sm.Conv, cs); err != nil {
				return sm, false, err
			}
		}
		sm.Seq = cs.lastSeq + 1
		sm.TS = time.Now().UnixMilli()
		data := bus.AppendStoredMessage(make([]byte, 0, 256+len(sm.Body)+len(sm.Trace)), &sm)
		msg := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{}}
		msg.Header.Set(headerSeq, strconv.FormatUint(sm.Seq, 10))
		if sm.Trace != "" {
			msg.Header.Set(bus.HeaderTrace, sm.Trace)
		}
		start := time.Now()
		ack, err := l.publish(ctx, msg, dedupID, cs.lastStreamSeq)
		l.m.Stage(immetrics.LatStore, start)
		if err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
				apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
				cs.loaded = false // another node appended: reload the tail and try again
				continue
			}
			cs.loaded = false
			return sm, false, fmt.Errorf("publish: %w", err)
		}
		if ack.Duplicate {
			orig, err := l.stream.GetMsg(ctx, ack.Sequence)
			if err != nil {
				return sm, true, fmt.Errorf("load duplicate %d: %w", ack.Sequence, err)
			}
			var first bus.StoredMessage
			if err := bus.DecodeStoredMessage(orig.Data, &first); err != nil {
				return sm, true, fmt.Errorf("decode duplicate %d: %w", ack.Sequence, err)
			}
			return first, true, nil
		}
		cs.lastStreamSeq, cs.lastSeq = ack.Sequence, sm.Seq
		return sm, false, nil
	}
	return sm, false, errors.New("conversation is contended; gave up")
}

// publish appends msg to the stream and waits for the store's ack. It uses
// the asynchronous publish, whose acks come back through one subscription
// (at most MaxInflight outstanding), rather than a request with its own
// inbox, context and timer per message; this goroutine still waits, holding
// the conversation, so the sequence stays serialized.
func (l *Logic) publish(ctx context.Context, msg *nats.Msg, dedupID string, lastSubjectSeq uint64) (*jetstream.PubAck, error) {
	fut, err := l.js.PublishMsgAsync(msg, jetstream.WithMsgID(dedupID), jetstream.WithExpectLastSequencePerSubject(lastSubjectSeq))
	if err != nil {
		return nil, err
	}
	select {
	case ack := <-fut.Ok():
		return ack, nil
	case err := <-fut.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Logic) loadConv(ctx context.Context, conv string, cs *convState) error {
	raw, err := l.stream.GetLastMsgForSubject(ctx, bus.MsgSubject(conv))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		cs.lastStreamSeq, cs.lastSeq = 0, 0
	case err != nil:
		return fmt.Errorf("load conversation tail: %w", err)
	default:
		seq, perr := strconv.ParseUint(raw.Header.Get(headerSeq), 10, 64)
		if perr != nil {
			return fmt.Errorf("conversation %s: stored message %d has no sequence header", conv, raw.Sequence)
		}
		cs.lastStreamSeq, cs.lastSeq = raw.Sequence, seq
	}
	if err := l.indexConv(ctx, conv); err != nil {
		return err
	}
	cs.loaded = true
	return nil
}

// indexConv records a one-to-one conversation under both users, so that a
// full sync finds it. Group conversations are indexed when members join.
func (l *Logic) indexConv(ctx context.Context, conv string) error {
	c, err := protocol.ParseConv(conv)
	if err != nil || c.Group != "" {
		return nil
	}
	for _, u := range c.Users {
		if err := l.indexMember(ctx, u, conv); err != nil {
			return err
		}
	}
	return nil
}

func (l *Logic) indexMember(ctx context.Context, user, conv string) error {
	key := user + "." + conv
	if _, ok := l.known.Load(key); ok {
		return nil
	}
	if _, err := l.convsKV.Put(ctx, key, []byte("1")); err != nil {
		return fmt.Errorf("index conversation: %w", err)
	}
	l.known.Store(key, struct{}{})
	return nil
}

// lookupGroup finds a group in the directory, or in the store when this node's
// watch has not seen it yet (created a moment ago through another node).
func (l *Logic) lookupGroup(name string) (bus.Group, bool) {
	if g, ok := l.dir.group(name); ok {
		return g, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := l.groupsKV.Get(ctx, name)
	if err != nil {
		return bus.Group{}, false
	}
	var g bus.Group
	if json.Unmarshal(e.Value(), &g) != nil {
		return bus.Group{}, false
	}
	l.dir.setGroup(name, g, e.Revision())
	return g, true
}
