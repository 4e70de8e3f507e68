package logic

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bounds of one sync answer; the client syncs again when More is set.
const (
	syncMaxMsgs  = 1000
	syncMaxBytes = 1 << 20
	syncTimeout  = 10 * time.Second
)

func (l *Logic) handleSync(m *nats.Msg) {
	l.m.Request("sync")
	var req bus.SyncRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || !protocol.ValidUser(req.User) || len(req.After) > protocol.MaxSyncConvs {
		l.m.Fail("sync", protocol.CodeBadRequest)
		replyJSON(m, bus.SyncReply{Code: protocol.CodeBadRequest, Error: "malformed sync request"})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	reply, err := l.sync(ctx, req)
	if err != nil {
		l.log.Warn("sync failed", "err", err)
		l.m.Fail("sync", protocol.CodeUnavailable)
		replyJSON(m, bus.SyncReply{Code: protocol.CodeUnavailable, Error: "sync failed; retry"})
		return
	}
	l.m.Synced(len(reply.Msgs))
	replyJSON(m, reply)
}

func (l *Logic) sync(ctx context.Context, req bus.SyncRequest) (bus.SyncReply, error) {
	after := map[string]uint64{}
	limit := map[string]uint64{}
	for c, s := range req.After {
		if lim, ok := l.readLimit(req.User, c); ok {
			after[c], limit[c] = s, lim
		}
	}
	if req.Full {
		convs, err := l.userConvs(ctx, req.User)
		if err != nil {
			return bus.SyncReply{}, err
		}
		for _, c := range convs {
			if _, ok := after[c]; ok {
				continue
			}
			if lim, ok := l.readLimit(req.User, c); ok {
				after[c], limit[c] = 0, lim
			}
		}
	}
	convs := make([]string, 0, len(after))
	for c := range after {
		convs = append(convs, c)
	}
	sort.Strings(convs)
	var reply bus.SyncReply
	size := 0
	for _, c := range convs {
		msgs, more, err := l.readConv(ctx, c, after[c], limit[c], syncMaxMsgs-len(reply.Msgs), syncMaxBytes-size)
		if err != nil {
			return bus.SyncReply{}, err
		}
		for _, sm := range msgs {
			size += len(sm.Body) + 200
		}
		reply.Msgs = append(reply.Msgs, msgs...)
		if more {
			reply.More = true
			break
		}
	}
	return reply, nil
}

// readLimit reports whether user may read the conversation conv, and up to
// which sequence: 0 for all of it, or for one who left a group the last
// message stored before.
func (l *Logic) readLimit(user, conv string) (uint64, bool) {
	c, err := protocol.ParseConv(conv)
	if err != nil {
		return 0, false
	}
	if c.Group != "" {
		return l.dir.readLimit(c.Group, user)
	}
	return 0, c.Users[0] == user || c.Users[1] == user
}

func (l *Logic) userConvs(ctx context.Context, user string) ([]string, error) {
	w, err := l.convsKV.Watch(ctx, user+".*", jetstream.IgnoreDeletes(), jetstream.MetaOnly())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var convs []string
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				return convs, nil
			}
			if _, c, ok := strings.Cut(e.Key(), "."); ok {
				convs = append(convs, c)
			}
		}
	}
}

// readConv returns the messages of conv after sequence after and up to
// upTo (0: no bound), at most max of them and about maxBytes; more says the
// limit cut it short.
func (l *Logic) readConv(ctx context.Context, conv string, after, upTo uint64, max, maxBytes int) ([]bus.StoredMessage, bool, error) {
	subj := bus.MsgSubject(conv)
	last, err := l.stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	lastSeq, _ := strconv.ParseUint(last.Header.Get(headerSeq), 10, 64)
	if upTo > 0 {
		lastSeq = min(lastSeq, upTo)
	}
	if lastSeq <= after {
		return nil, false, nil
	}
	if max <= 0 || maxBytes <= 0 {
		return nil, true, nil
	}
	cons, err := l.js.OrderedConsumer(ctx, bus.StreamMsgs, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		return nil, false, err
	}
	var out []bus.StoredMessage
	size := 0
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, false, err
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			md, err := msg.Metadata()
			if err != nil {
				continue
			}
			seq, _ := strconv.ParseUint(msg.Headers().Get(headerSeq), 10, 64)
			if upTo > 0 && seq > upTo {
				return out, false, nil
			}
			if seq > after {
				var sm bus.StoredMessage
				if json.Unmarshal(msg.Data(), &sm) == nil {
					if len(out) >= max || size >= maxBytes {
						return out, true, nil
					}
					out = append(out, sm)
					size += len(sm.Body) + 200
				}
			}
			if md.Sequence.Stream >= last.Sequence {
				return out, false, nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, false, err
		}
		if n == 0 {
			return out, false, nil
		}
	}
}
