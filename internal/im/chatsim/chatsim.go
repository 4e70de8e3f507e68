// Package chatsim is the simulated users of `imwatch up`: users connected
// through the gateways chatting one-to-one and in groups at a steady rate,
// for as long as it runs, so that a fresh install has live traffic to watch.
// (internal/im/loadgen measures a run of fixed length instead.)
package chatsim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// Config says how many users chat and how fast.
type Config struct {
	URLs   []string // the gateways; user i connects to URLs[i%len] first, the others for failover
	Secret []byte
	Users  int     // 2 to MaxUsers
	Rate   float64 // messages per second of all users together, 0 to MaxRate
	// GroupShare is the share of messages sent to a group (default 0.3);
	// users are in groups of GroupSize (default 5).
	GroupShare float64
	GroupSize  int
	Log        *slog.Logger
}

// Limits.
const (
	MaxUsers    = 10000
	MaxRate     = 10000
	maxInflight = 256 // sends awaiting their ack; beyond, a tick's message is skipped and counted
	userPrefix  = "sim-"
)

// Validate checks the config; errors name the flag.
func (c Config) Validate() error {
	if len(c.URLs) == 0 {
		return errors.New("chatsim: no gateway")
	}
	if c.Users < 2 || c.Users > MaxUsers {
		return fmt.Errorf("--users %d: want 2 to %d", c.Users, MaxUsers)
	}
	if !(c.Rate >= 0 && c.Rate <= MaxRate) {
		return fmt.Errorf("--rate %g: want 0 to %d messages per second", c.Rate, MaxRate)
	}
	if c.GroupShare < 0 || c.GroupShare > 1 {
		return fmt.Errorf("group share %g: want 0 to 1", c.GroupShare)
	}
	return nil
}

// Stats are what the users did so far.
type Stats struct {
	Sent, Failed, Skipped, Received int64
}

// Sim is a running set of simulated users.
type Sim struct {
	cfg     Config
	log     *slog.Logger
	users   []*client.Client
	groups  [][]int // members by index into users
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sem     chan struct{}
	sent    atomic.Int64
	failed  atomic.Int64
	skipped atomic.Int64
	recv    atomic.Int64
}

// Start connects the users, sets up their groups and begins chatting. It
// returns once the first users are connected; the rest connect meanwhile.
func Start(ctx context.Context, cfg Config) (*Sim, error) {
	if cfg.GroupShare == 0 {
		cfg.GroupShare = 0.3
	}
	if cfg.GroupSize < 2 {
		cfg.GroupSize = 5
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	rctx, cancel := context.WithCancel(context.Background())
	s := &Sim{cfg: cfg, log: cfg.Log.With("component", "chatsim"), cancel: cancel, sem: make(chan struct{}, maxInflight)}
	s.users = make([]*client.Client, cfg.Users)
	var mu sync.Mutex
	var firstErr error
	dial := func(i int) {
		user := userPrefix + strconv.Itoa(i+1)
		urls := append(append([]string(nil), cfg.URLs[i%len(cfg.URLs):]...), cfg.URLs[:i%len(cfg.URLs)]...)
		token := func() (string, error) { return protocol.NewToken(cfg.Secret, user, "sim", 24*time.Hour) }
		dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		c, err := client.Dial(dctx, client.Config{URLs: urls, Token: token, Inbox: 256, Log: cfg.Log})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("chatsim: user %s: %w", user, err)
			}
			return
		}
		s.users[i] = c
	}
	var dw sync.WaitGroup
	conc := make(chan struct{}, 32)
	for i := range cfg.Users {
		dw.Add(1)
		conc <- struct{}{}
		go func() { defer dw.Done(); dial(i); <-conc }()
	}
	dw.Wait()
	if firstErr != nil {
		s.Stop()
		return nil, firstErr
	}
	for _, c := range s.users {
		s.wg.Add(1)
		go s.drain(rctx, c)
	}
	if err := s.makeGroups(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	if cfg.Rate > 0 {
		s.wg.Add(1)
		go s.run(rctx)
	}
	return s, nil
}

// makeGroups puts the users in groups of GroupSize, created by their first
// member (again at every start: adding members is idempotent).
func (s *Sim) makeGroups(ctx context.Context) error {
	n := s.cfg.GroupSize
	for start := 0; start+1 < len(s.users); start += n {
		var members []int
		var names []string
		for i := start; i < min(start+n, len(s.users)); i++ {
			members = append(members, i)
			names = append(names, s.users[i].User())
		}
		if len(members) < 2 {
			break
		}
		group := "simgroup-" + strconv.Itoa(len(s.groups)+1)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := s.users[members[0]].CreateGroup(cctx, group, names[1:]...)
		if err != nil {
			_, err = s.users[members[0]].AddMembers(cctx, group, names[1:]...)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("chatsim: group %s: %w", group, err)
		}
		s.groups = append(s.groups, members)
	}
	return nil
}

func (s *Sim) drain(ctx context.Context, c *client.Client) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-c.Messages():
			if !ok {
				return
			}
			s.recv.Add(1)
		}
	}
}

// run sends at the rate, each message from a random user to a random peer
// or to one of its groups.
func (s *Sim) run(ctx context.Context) {
	defer s.wg.Done()
	interval := time.Duration(float64(time.Second) / s.cfg.Rate)
	perTick := 1
	if interval < 10*time.Millisecond { // at high rates, several messages per tick
		perTick = int(math.Ceil(float64(10*time.Millisecond) / float64(interval)))
		interval *= time.Duration(perTick)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	seq := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for range perTick {
			seq++
			select {
			case s.sem <- struct{}{}:
			default:
				s.skipped.Add(1)
				continue
			}
			s.wg.Add(1)
			go s.sendOne(ctx, seq)
		}
	}
}

func (s *Sim) sendOne(ctx context.Context, seq int) {
	defer s.wg.Done()
	defer func() { <-s.sem }()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	body := "hello " + strconv.Itoa(seq)
	var err error
	if len(s.groups) > 0 && rand.Float64() < s.cfg.GroupShare {
		gi := rand.IntN(len(s.groups))
		g := s.groups[gi]
		from := s.users[g[rand.IntN(len(g))]]
		_, err = from.SendGroup(sctx, "simgroup-"+strconv.Itoa(gi+1), body)
	} else {
		i := rand.IntN(len(s.users))
		j := (i + 1 + rand.IntN(len(s.users)-1)) % len(s.users)
		_, err = s.users[i].Send(sctx, s.users[j].User(), body)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.failed.Add(1)
			s.log.Debug("simulated send failed", "err", err)
		}
		return
	}
	s.sent.Add(1)
}

// Stats reports what the users did so far.
func (s *Sim) Stats() Stats {
	return Stats{Sent: s.sent.Load(), Failed: s.failed.Load(), Skipped: s.skipped.Load(), Received: s.recv.Load()}
}

// Stop ends the chat and disconnects the users.
func (s *Sim) Stop() {
	s.cancel()
	for _, c := range s.users {
		if c != nil {
			_ = c.Close()
		}
	}
	s.wg.Wait()
}
