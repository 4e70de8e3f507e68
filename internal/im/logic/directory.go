package logic

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/imwatch/imwatch/internal/im/bus"
	"github.com/imwatch/imwatch/internal/im/protocol"
	"github.com/nats-io/nats.go/jetstream"
)

// directory is a logic node's in-memory view of presence, live gateways and
// groups, kept current by watching their key-value buckets.
type directory struct {
	mu       sync.RWMutex
	devices  map[string]map[string]bus.Presence // user -> device -> where
	gateways map[string]gatewaySeen
	groups   map[string]bus.Group
	groupRev map[string]uint64
}

type gatewaySeen struct {
	epoch string
	seen  time.Time
}

func newDirectory() *directory {
	return &directory{
		devices:  map[string]map[string]bus.Presence{},
		gateways: map[string]gatewaySeen{},
		groups:   map[string]bus.Group{},
		groupRev: map[string]uint64{},
	}
}

// watch follows one bucket until ctx ends; ready is closed once the initial
// values are loaded.
func (d *directory) watch(ctx context.Context, kv jetstream.KeyValue, apply func(jetstream.KeyValueEntry), ready chan<- struct{}) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	go func() {
		defer w.Stop()
		once := false
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					if !once {
						once = true
						close(ready)
					}
					continue
				}
				apply(e)
			}
		}
	}()
	return nil
}

func (d *directory) applyPresence(e jetstream.KeyValueEntry) {
	user, device, ok := strings.Cut(e.Key(), ".")
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		if devs := d.devices[user]; devs != nil {
			delete(devs, device)
			if len(devs) == 0 {
				delete(d.devices, user)
			}
		}
		return
	}
	var p bus.Presence
	if json.Unmarshal(e.Value(), &p) != nil {
		return
	}
	devs := d.devices[user]
	if devs == nil {
		devs = map[string]bus.Presence{}
		d.devices[user] = devs
	}
	devs[device] = p
}

func (d *directory) applyGateway(e jetstream.KeyValueEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(d.gateways, e.Key())
		return
	}
	var g bus.GatewayInfo
	if json.Unmarshal(e.Value(), &g) != nil {
		return
	}
	d.gateways[e.Key()] = gatewaySeen{epoch: g.Epoch, seen: time.Now()}
}

func (d *directory) applyGroup(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		d.mu.Lock()
		delete(d.groups, e.Key())
		delete(d.groupRev, e.Key())
		d.mu.Unlock()
		return
	}
	var g bus.Group
	if json.Unmarshal(e.Value(), &g) != nil {
		return
	}
	d.setGroup(e.Key(), g, e.Revision())
}

// setGroup records a group at a revision, ignoring one older than what it has.
func (d *directory) setGroup(name string, g bus.Group, rev uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if rev < d.groupRev[name] {
		return
	}
	d.groups[name] = g
	d.groupRev[name] = rev
}

// members are the users of a conversation; ok is false for an unknown group.
func (d *directory) members(conv protocol.Conv) ([]string, bool) {
	if conv.Group == "" {
		if conv.Users[0] == conv.Users[1] {
			return conv.Users[:1], true
		}
		return conv.Users[:], true
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	g, ok := d.groups[conv.Group]
	return g.Members, ok
}

// recipients are the users a message of conv with sequence seq is for: the
// members, and for a group also those who left after it was stored.
func (d *directory) recipients(conv protocol.Conv, seq uint64) ([]string, bool) {
	if conv.Group == "" {
		return d.members(conv)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	g, ok := d.groups[conv.Group]
	if !ok || len(g.Left) == 0 {
		return g.Members, ok
	}
	out := slices.Clone(g.Members)
	for u, last := range g.Left {
		if seq <= last {
			out = append(out, u)
		}
	}
	return out, true
}

// readLimit says whether user may read the group conversation of group, and
// up to which sequence: 0 for all of it (a member), the last one stored
// before the removal for one who left.
func (d *directory) readLimit(group, user string) (uint64, bool) {
	g, ok := d.group(group)
	if !ok {
		return 0, false
	}
	if slices.Contains(g.Members, user) {
		return 0, true
	}
	last, ok := g.Left[user]
	return last, ok && last > 0
}

func (d *directory) group(name string) (bus.Group, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	g, ok := d.groups[name]
	return g, ok
}

func (d *directory) isMember(group, user string) bool {
	g, ok := d.group(group)
	if !ok {
		return false
	}
	for _, m := range g.Members {
		if m == user {
			return true
		}
	}
	return false
}

// route returns, per gateway, the online devices of users, leaving out skip.
func (d *directory) route(users []string, skip bus.Target, only map[bus.Target]struct{}) map[string][]bus.Target {
	now := time.Now()
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := map[string][]bus.Target{}
	for _, u := range users {
		for dev, p := range d.devices[u] {
			t := bus.Target{User: u, Device: dev}
			if t == skip {
				continue
			}
			if only != nil {
				if _, ok := only[t]; !ok {
					continue
				}
			}
			g, ok := d.gateways[p.Gateway]
			if !ok || g.epoch != p.Epoch || now.Sub(g.seen) > bus.GatewayDead {
				continue
			}
			out[p.Gateway] = append(out[p.Gateway], t)
		}
	}
	return out
}
