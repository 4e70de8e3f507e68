package logic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func (l *Logic) handleGroup(m *nats.Msg) {
	l.m.Request("group")
	var req bus.GroupRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || !protocol.ValidUser(req.User) || !protocol.ValidUser(req.Group) || len(req.Members) > protocol.MaxGroupMembers {
		l.m.Fail("group", protocol.CodeBadRequest)
		replyJSON(m, bus.GroupReply{Code: protocol.CodeBadRequest, Error: "malformed group request"})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply := l.group(ctx, req)
	if reply.Code != "" {
		l.m.Fail("group", reply.Code)
	}
	replyJSON(m, reply)
}

func (l *Logic) group(ctx context.Context, req bus.GroupRequest) bus.GroupReply {
	for attempt := 0; attempt < 10; attempt++ {
		reply, retry := l.groupOnce(ctx, req)
		if !retry {
			return reply
		}
	}
	return bus.GroupReply{Code: protocol.CodeUnavailable, Error: "group is contended; retry"}
}

// groupOnce applies one group change with compare-and-set; retry says another
// change won the race.
func (l *Logic) groupOnce(ctx context.Context, req bus.GroupRequest) (bus.GroupReply, bool) {
	conv := protocol.GroupConv(req.Group)
	entry, err := l.groupsKV.Get(ctx, req.Group)
	exists := err == nil
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return bus.GroupReply{Code: protocol.CodeUnavailable, Error: "group store unavailable"}, false
	}
	var g bus.Group
	if exists {
		if err := json.Unmarshal(entry.Value(), &g); err != nil {
			return bus.GroupReply{Code: protocol.CodeInternal, Error: "stored group is corrupt"}, false
		}
	}
	var added, removed []string
	switch req.Op {
	case protocol.TypeGroupCreate:
		if exists {
			return bus.GroupReply{Code: protocol.CodeGroupExists, Error: "group " + req.Group + " exists"}, false
		}
		g = bus.Group{Owner: req.User, Members: []string{req.User}}
		added = []string{req.User}
		for _, m := range req.Members {
			if !slices.Contains(g.Members, m) {
				g.Members = append(g.Members, m)
				added = append(added, m)
			}
		}
	case protocol.TypeGroupAdd:
		if !exists {
			return bus.GroupReply{Code: protocol.CodeNoSuchGroup, Error: "no group " + req.Group}, false
		}
		if g.Owner != req.User {
			return bus.GroupReply{Code: protocol.CodeForbidden, Error: "only the owner may add members"}, false
		}
		for _, m := range req.Members {
			if !slices.Contains(g.Members, m) {
				g.Members = append(g.Members, m)
				added = append(added, m)
			}
			delete(g.Left, m)
		}
	case protocol.TypeGroupRemove:
		if !exists {
			return bus.GroupReply{Code: protocol.CodeNoSuchGroup, Error: "no group " + req.Group}, false
		}
		for _, m := range req.Members {
			if m != req.User && g.Owner != req.User {
				return bus.GroupReply{Code: protocol.CodeForbidden, Error: "only the owner may remove others"}, false
			}
		}
		g.Members = slices.DeleteFunc(g.Members, func(m string) bool {
			if slices.Contains(req.Members, m) {
				removed = append(removed, m)
				return true
			}
			return false
		})
		if len(removed) > 0 {
			// What was stored before the removal was sent to the removed
			// members too: they keep it, by push and by sync, even when offline now.
			last, err := l.convTail(ctx, conv)
			if err != nil {
				return bus.GroupReply{Code: protocol.CodeUnavailable, Error: "message store unavailable"}, false
			}
			if g.Left == nil {
				g.Left = map[string]uint64{}
			}
			for _, m := range removed {
				g.Left[m] = last
			}
			trimLeft(g.Left, bus.MaxGroupLeft)
		}
	default:
		return bus.GroupReply{Code: protocol.CodeBadRequest, Error: "unknown group operation"}, false
	}
	if len(g.Members) > protocol.MaxGroupMembers {
		return bus.GroupReply{Code: protocol.CodeBadRequest, Error: "group would exceed the member limit"}, false
	}
	data, _ := json.Marshal(g)
	var rev uint64
	if exists {
		rev, err = l.groupsKV.Update(ctx, req.Group, data, entry.Revision())
	} else {
		rev, err = l.groupsKV.Create(ctx, req.Group, data)
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return bus.GroupReply{}, true
	}
	if err != nil {
		return bus.GroupReply{Code: protocol.CodeUnavailable, Error: "group store unavailable"}, false
	}
	// The change is visible to this node's directory before it answers, so a
	// send right after the answer finds the new members.
	l.dir.setGroup(req.Group, g, rev)
	for _, m := range added {
		_ = l.indexMember(ctx, m, conv)
	}
	// The removed members' index entries stay: a full sync finds the
	// conversation and reads it up to their Left sequence.
	return bus.GroupReply{Members: g.Members}, false
}

// trimLeft forgets the earliest removals beyond max.
func trimLeft(left map[string]uint64, max int) {
	for len(left) > max {
		var oldest string
		for u, s := range left {
			if oldest == "" || s < left[oldest] || (s == left[oldest] && u < oldest) {
				oldest = u
			}
		}
		delete(left, oldest)
	}
}

// convTail is the last sequence stored in conv, 0 when it is empty.
func (l *Logic) convTail(ctx context.Context, conv string) (uint64, error) {
	raw, err := l.stream.GetLastMsgForSubject(ctx, bus.MsgSubject(conv))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("load conversation tail: %w", err)
	}
	seq, err := strconv.ParseUint(raw.Header.Get(headerSeq), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("conversation %s: stored message %d has no sequence header", conv, raw.Sequence)
	}
	return seq, nil
}
