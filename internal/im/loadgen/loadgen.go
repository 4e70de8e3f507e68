// Package loadgen is the reference IM's load generator: many users connect
// with the Go client and chat one-to-one at a fixed total rate, and every
// message's send-ack and delivery are timed and checked for loss and
// duplicates. `imwatch im bench` and the benchmarks under bench/ use it.
package loadgen

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/imwatch/imwatch/pkg/imtrace"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imwatch/imwatch/internal/im/client"
	"github.com/imwatch/imwatch/internal/im/protocol"
)

// Config says what load to make.
type Config struct {
	URLs     []string      // gateways' ws:// URLs; users are spread over them, each given all for failover
	Secret   []byte        // the cluster's token secret
	Users    int           // users connected, each with one device
	Rate     float64       // messages per second of all users together; 0 connects the users and holds them idle for Duration
	Duration time.Duration // how long to send
	Drain    time.Duration // after the last send-ack, how long to wait for outstanding deliveries

	MaxInflight     int           // sends awaiting their send-ack at once (default: half a second's worth, 64 to 10000)
	DialConcurrency int           // connections being set up at once (default 64)
	SendTimeout     time.Duration // a send not acknowledged in this time is an error (default 10s)
	BodyBytes       int           // message body size, padded (default 64)
	SkipWarmup      bool          // do not send one unmeasured message per user before measuring
	RunID           string        // prefix of user ids (default: random); [A-Za-z0-9_-]
	Log             *slog.Logger
	Tracer          *imtrace.Tracer // the users' client spans (im.client.*); nil: none
	// Sending, when set, is called once as the measured sending begins
	// (after the warm-up), with a function that reads how many messages
	// have been delivered so far: for a caller that samples the run while it
	// goes (bench/tracingcost -mode slices). It must not block.
	Sending func(delivered func() uint64)
}

// Limits of a run, so that its bookkeeping stays bounded.
const (
	MaxUsers    = 100000
	MaxMessages = 50_000_000 // Rate × Duration
)

// Defaults of the optional fields.
const (
	DefaultDrain           = 10 * time.Second
	DefaultDialConcurrency = 64
	DefaultSendTimeout     = 10 * time.Second
	DefaultBodyBytes       = 64
)

// clientInbox is each client's buffer of messages for the application. The
// client's default (4096 messages of about 170 bytes) would cost the load
// generator 700 KB per user and long GC pauses; a user receives only Rate/Users
// messages per second, read at once by its receiver.
const clientInbox = 256

// gatewayFrameLimit is the gateway's default per-connection frame rate; a
// user sends R/N messages and as many deliver-acks per second.
const gatewayFrameLimit = 200

func (c *Config) setDefaults() {
	if c.Drain <= 0 {
		c.Drain = DefaultDrain
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = min(max(64, int(math.Ceil(c.Rate/2))), 10000)
	}
	if c.DialConcurrency <= 0 {
		c.DialConcurrency = DefaultDialConcurrency
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.BodyBytes <= 0 {
		c.BodyBytes = DefaultBodyBytes
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// Validate checks the configuration; its errors name the field at fault.
func (c Config) Validate() error {
	if len(c.URLs) == 0 {
		return errors.New("at least one gateway URL is needed")
	}
	for _, u := range c.URLs {
		if !strings.HasPrefix(u, "ws://") && !strings.HasPrefix(u, "wss://") {
			return fmt.Errorf("gateway URL %q: want ws://HOST:PORT/ws or wss://...", u)
		}
	}
	if len(c.Secret) < 16 {
		return errors.New("the token secret must be at least 16 bytes")
	}
	if c.Users < 2 || c.Users > MaxUsers {
		return fmt.Errorf("users %d: want 2 to %d (users chat in pairs)", c.Users, MaxUsers)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("rate %g: want a number of messages per second, at least 0", c.Rate)
	}
	if c.Duration <= 0 {
		return fmt.Errorf("duration %s: must be positive", c.Duration)
	}
	if n := c.Rate * c.Duration.Seconds(); n > MaxMessages {
		return fmt.Errorf("rate × duration is %.0f messages, over the limit of %d", n, MaxMessages)
	}
	if c.BodyBytes > protocol.MaxBodyBytes {
		return fmt.Errorf("body size %d: over the protocol's limit of %d", c.BodyBytes, protocol.MaxBodyBytes)
	}
	if c.RunID != "" && (!protocol.ValidUser(c.RunID) || len(c.RunID) > 32) {
		return fmt.Errorf("run id %q: want 1 to 32 characters of A-Z a-z 0-9 _ -", c.RunID)
	}
	return nil
}

// Report is what a run measured. Durations are in milliseconds.
type Report struct {
	RunID           string  `json:"run_id"`
	Users           int     `json:"users"`
	Gateways        int     `json:"gateways"`
	TargetRate      float64 `json:"target_rate"`
	DurationSeconds float64 `json:"duration_seconds"`
	MaxInflight     int     `json:"max_inflight"`
	BodyBytes       int     `json:"body_bytes"`

	ConnectSeconds float64 `json:"connect_seconds"` // to connect every user
	ConnectP50MS   float64 `json:"connect_p50_ms"`  // one user's Dial: connect, auth, first sync
	ConnectP99MS   float64 `json:"connect_p99_ms"`
	ConnectMaxMS   float64 `json:"connect_max_ms"`
	Reconnects     int64   `json:"reconnects"`

	Sent             uint64            `json:"sent"`       // sends started
	Acked            uint64            `json:"acked"`      // sends answered by a send-ack
	Delivered        uint64            `json:"delivered"`  // distinct messages handed to the recipient's application
	Duplicates       uint64            `json:"duplicates"` // messages handed to the application more than once
	Lost             uint64            `json:"lost"`       // acknowledged but not delivered by the end of the drain
	Errors           uint64            `json:"errors"`     // sends that failed
	ErrorsByCode     map[string]uint64 `json:"errors_by_code,omitempty"`
	DeliveredUnacked uint64            `json:"delivered_unacked"`         // delivered although the send reported failure
	Misrouted        uint64            `json:"misrouted"`                 // delivered to a user it was not sent to
	ViaSync          uint64            `json:"via_sync"`                  // delivered by sync rather than by push
	ClientDupsDrop   int64             `json:"client_duplicates_dropped"` // redeliveries the clients absorbed (at-least-once push)
	OwnSynced        uint64            `json:"own_messages_synced"`       // the user's own sends handed back by a sync after a reconnect

	SentPerSecond      float64 `json:"sent_per_second"`
	DeliveredPerSecond float64 `json:"delivered_per_second"` // delivered / (last delivery − start of sending)
	RateAchieved       bool    `json:"rate_achieved"`        // ≥99% of the messages sent and ≥95% of the rate delivered
	SendLagMaxMS       float64 `json:"send_lag_max_ms"`      // how far sending fell behind its schedule
	DrainSeconds       float64 `json:"drain_seconds"`        // from the end of sending to the last delivery

	AckP50MS  float64 `json:"ack_p50_ms"` // send to send-ack
	AckP90MS  float64 `json:"ack_p90_ms"`
	AckP99MS  float64 `json:"ack_p99_ms"`
	AckMaxMS  float64 `json:"ack_max_ms"`
	AckMeanMS float64 `json:"ack_mean_ms"`
	E2EP50MS  float64 `json:"e2e_p50_ms"` // send to delivery to the recipient's application
	E2EP90MS  float64 `json:"e2e_p90_ms"`
	E2EP99MS  float64 `json:"e2e_p99_ms"`
	E2EMaxMS  float64 `json:"e2e_max_ms"`
	E2EMeanMS float64 `json:"e2e_mean_ms"`

	Warnings []string `json:"warnings,omitempty"`
}

// Per-message state bits.
const (
	stSent uint32 = 1 << iota
	stAcked
	stDelivered
	stFailed
)

type run struct {
	cfg   Config
	log   *slog.Logger
	users []string
	cl    []*client.Client

	start time.Time // of the measured sending
	st    []atomic.Uint32

	stop    chan struct{} // ends the receivers
	recvWG  sync.WaitGroup
	started atomic.Bool

	connectHist, ackHist, e2eHist Histogram

	sent, acked, errs, delivered, dups, misrouted, viaSync, foreign, ownSynced atomic.Uint64
	warmDelivered                                                              atomic.Int64
	lastDelivery                                                               atomic.Int64 // ns since start
	lagMax                                                                     atomic.Int64 // ns

	errMu  sync.Mutex
	byCode map[string]uint64
}

// Run connects cfg.Users users, has them chat for cfg.Duration at cfg.Rate and
// reports what it measured. It returns an error only when the run could not
// be made (bad config, users that could not connect); lost or duplicate
// messages are in the report.
func Run(ctx context.Context, cfg Config) (Report, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return Report{}, fmt.Errorf("loadgen: %w", err)
	}
	if cfg.RunID == "" {
		cfg.RunID = randomID()
	}
	r := &run{cfg: cfg, log: cfg.Log.With("component", "loadgen", "run", cfg.RunID), stop: make(chan struct{}), byCode: map[string]uint64{}}
	r.users = make([]string, cfg.Users)
	for i := range r.users {
		r.users[i] = "lg-" + cfg.RunID + "-" + strconv.Itoa(i)
	}
	var warnings []string
	if perUser := 2 * cfg.Rate / float64(cfg.Users); perUser > gatewayFrameLimit*0.8 {
		w := fmt.Sprintf("each user sends %.0f frames/s (messages and deliver-acks), near or over the gateway's default limit of %d per connection: use more users", perUser, gatewayFrameLimit)
		r.log.Warn(w)
		warnings = append(warnings, w)
	}
	defer r.closeAll()
	connStart := time.Now()
	if err := r.connect(ctx); err != nil {
		return Report{}, err
	}
	connSeconds := time.Since(connStart).Seconds()
	r.log.Info("all users connected", "users", cfg.Users, "seconds", round(connSeconds, 2))
	if cfg.Rate == 0 {
		r.log.Info("holding the users idle", "for", cfg.Duration)
		select {
		case <-time.After(cfg.Duration):
		case <-ctx.Done():
		}
		rep := r.report(connSeconds, 0)
		rep.Warnings = warnings
		return rep, nil
	}
	if !cfg.SkipWarmup {
		if err := r.warmup(ctx); err != nil {
			warnings = append(warnings, err.Error())
			r.log.Warn(err.Error())
		}
	}
	sendSeconds := r.send(ctx)
	r.drain()
	rep := r.report(connSeconds, sendSeconds)
	rep.Warnings = warnings
	return rep, nil
}

func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// connect dials every user, DialConcurrency at a time, each starting at a
// different gateway, and starts its receiver.
func (r *run) connect(ctx context.Context) error {
	n := r.cfg.Users
	r.cl = make([]*client.Client, n)
	ttl := r.cfg.Duration + r.cfg.Drain + 24*time.Hour
	jobs := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	for w := 0; w < min(r.cfg.DialConcurrency, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				urls := rotate(r.cfg.URLs, i)
				user := r.users[i]
				token := func() (string, error) { return protocol.NewToken(r.cfg.Secret, user, "lg", ttl) }
				dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				t0 := time.Now()
				c, err := client.Dial(dctx, client.Config{URLs: urls, Token: token, DialTimeout: 10 * time.Second, Inbox: clientInbox, Log: r.cfg.Log, Tracer: r.cfg.Tracer})
				cancel()
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = fmt.Errorf("user %s: %w", user, err) })
					continue
				}
				r.connectHist.Record(time.Since(t0))
				r.cl[i] = c
				r.recvWG.Add(1)
				go r.receive(i, c)
			}
		}()
	}
	last := time.Now()
	for i := 0; i < n; i++ {
		if failed.Load() > 0 || ctx.Err() != nil {
			break
		}
		jobs <- i
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			r.log.Info("connecting", "users", i, "of", n)
		}
	}
	close(jobs)
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("loadgen: %d users could not connect; the first: %w", f, firstErr)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("loadgen: connecting: %w", ctx.Err())
	}
	return nil
}

func rotate(urls []string, i int) []string {
	k := i % len(urls)
	out := make([]string, 0, len(urls))
	out = append(out, urls[k:]...)
	return append(out, urls[:k]...)
}

// peer is the user that user i sends to: a ring, so that there are as many
// one-to-one conversations as users, each with one sender.
func (r *run) peer(i int) int { return (i + 1) % r.cfg.Users }

// Bodies are "RUNID.K.T.pad" for measured message K sent T ns after the start
// of sending, and "RUNID.w.I" for user I's warm-up message.
func (r *run) body(buf []byte, k int, t time.Duration) string {
	buf = append(buf[:0], r.cfg.RunID...)
	buf = append(buf, '.')
	buf = strconv.AppendInt(buf, int64(k), 10)
	buf = append(buf, '.')
	buf = strconv.AppendInt(buf, int64(t), 10)
	buf = append(buf, '.')
	for len(buf) < r.cfg.BodyBytes {
		buf = append(buf, 'x')
	}
	return string(buf)
}

func (r *run) receive(me int, c *client.Client) {
	defer r.recvWG.Done()
	for {
		select {
		case <-r.stop:
			return
		case m := <-c.Messages():
			r.received(me, m)
		}
	}
}

func (r *run) received(me int, m client.Message) {
	rest, ok := strings.CutPrefix(m.Body, r.cfg.RunID+".")
	if !ok {
		r.foreign.Add(1)
		return
	}
	if m.From == r.users[me] {
		// The user's own message: a full sync after a reconnect hands back
		// the conversation's whole history, the user's sends included.
		r.ownSynced.Add(1)
		return
	}
	ks, rest, _ := strings.Cut(rest, ".")
	if ks == "w" {
		r.warmDelivered.Add(1)
		return
	}
	ts, _, _ := strings.Cut(rest, ".")
	k, err1 := strconv.Atoi(ks)
	t, err2 := strconv.ParseInt(ts, 10, 64)
	if !r.started.Load() || err1 != nil || err2 != nil || k < 0 || k >= len(r.st) {
		r.foreign.Add(1)
		return
	}
	now := time.Since(r.start)
	if r.peer(k%r.cfg.Users) != me {
		r.misrouted.Add(1)
	}
	if old := r.st[k].Or(stDelivered); old&stDelivered != 0 {
		r.dups.Add(1)
		return
	}
	r.delivered.Add(1)
	if m.Sync {
		r.viaSync.Add(1)
	}
	r.e2eHist.Record(now - time.Duration(t))
	for {
		last := r.lastDelivery.Load()
		if int64(now) <= last || r.lastDelivery.CompareAndSwap(last, int64(now)) {
			break
		}
	}
}

// warmup sends one unmeasured message per user and waits for them, so that
// the measured phase finds every conversation loaded on the logic node.
func (r *run) warmup(ctx context.Context) error {
	t0 := time.Now()
	sem := make(chan struct{}, r.cfg.MaxInflight)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range r.cl {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			sctx, cancel := context.WithTimeout(ctx, r.cfg.SendTimeout)
			defer cancel()
			if _, err := r.cl[i].Send(sctx, r.users[r.peer(i)], r.cfg.RunID+".w."+strconv.Itoa(i)); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	want := int64(len(r.cl)) - failed.Load()
	deadline := time.Now().Add(r.cfg.Drain)
	for r.warmDelivered.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	r.log.Info("warm-up done", "seconds", round(time.Since(t0).Seconds(), 2), "delivered", r.warmDelivered.Load(), "of", len(r.cl))
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("warm-up: %d of %d sends failed", f, len(r.cl))
	}
	if got := r.warmDelivered.Load(); got < want {
		return fmt.Errorf("warm-up: %d of %d messages delivered within %s", got, want, r.cfg.Drain)
	}
	return nil
}

// send paces messages at cfg.Rate for cfg.Duration, round robin over the
// users, with at most MaxInflight awaiting their send-ack. It returns the
// length of the sending phase in seconds and waits for every send to finish.
func (r *run) send(ctx context.Context) float64 {
	total := int(r.cfg.Rate * r.cfg.Duration.Seconds())
	r.st = make([]atomic.Uint32, total)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(r.cfg.MaxInflight, max(total, 1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, r.cfg.BodyBytes+48)
			for k := range jobs {
				r.sendOne(ctx, k, buf)
			}
		}()
	}
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	r.start = time.Now()
	r.started.Store(true)
	if r.cfg.Sending != nil {
		r.cfg.Sending(r.delivered.Load)
	}
	end := r.start.Add(r.cfg.Duration)
	interval := time.Duration(float64(time.Second) / r.cfg.Rate)
	k := 0
pace:
	for k < total {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		due := min(total, int(r.cfg.Rate*now.Sub(r.start).Seconds())+1)
		for ; k < due; k++ {
			if k%64 == 0 && !time.Now().Before(end) {
				break pace
			}
			if lag := time.Since(r.start) - time.Duration(k)*interval; lag > time.Duration(r.lagMax.Load()) {
				r.lagMax.Store(int64(lag))
			}
			select {
			case jobs <- k:
			case <-ctx.Done():
				break pace
			}
		}
		select {
		case <-progress.C:
			r.log.Info("sending", "sent", r.sent.Load(), "acked", r.acked.Load(), "delivered", r.delivered.Load(), "errors", r.errs.Load())
		default:
		}
		if k < total {
			if wait := time.Until(r.start.Add(time.Duration(k) * interval)); wait > 0 {
				time.Sleep(max(wait, time.Millisecond))
			}
		}
	}
	sendSeconds := min(time.Since(r.start), r.cfg.Duration).Seconds()
	close(jobs)
	wg.Wait()
	return sendSeconds
}

func (r *run) sendOne(ctx context.Context, k int, buf []byte) {
	i := k % r.cfg.Users
	body := r.body(buf, k, time.Since(r.start))
	r.st[k].Or(stSent)
	r.sent.Add(1)
	sctx, cancel := context.WithTimeout(ctx, r.cfg.SendTimeout)
	t0 := time.Now()
	_, err := r.cl[i].Send(sctx, r.users[r.peer(i)], body)
	cancel()
	if err != nil {
		r.st[k].Or(stFailed)
		r.errs.Add(1)
		r.countError(err)
		return
	}
	r.ackHist.Record(time.Since(t0))
	r.st[k].Or(stAcked)
	r.acked.Add(1)
}

func (r *run) countError(err error) {
	code := "other"
	var perr *protocol.Error
	switch {
	case errors.As(err, &perr):
		code = perr.Code
	case errors.Is(err, context.DeadlineExceeded):
		code = "timeout"
	case errors.Is(err, context.Canceled):
		code = "canceled"
	case errors.Is(err, client.ErrClosed):
		code = "closed"
	}
	r.errMu.Lock()
	r.byCode[code]++
	r.errMu.Unlock()
	r.log.Debug("send failed", "err", err)
}

// drain waits up to cfg.Drain for every acknowledged message to be delivered.
func (r *run) drain() {
	deadline := time.Now().Add(r.cfg.Drain)
	for time.Now().Before(deadline) {
		if r.delivered.Load() >= r.acked.Load() && r.count().lost == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type tally struct{ lost, deliveredUnacked uint64 }

func (r *run) count() tally {
	var t tally
	for i := range r.st {
		s := r.st[i].Load()
		switch {
		case s&stAcked != 0 && s&stDelivered == 0:
			t.lost++
		case s&stDelivered != 0 && s&stAcked == 0:
			t.deliveredUnacked++
		}
	}
	return t
}

func (r *run) report(connSeconds, sendSeconds float64) Report {
	rep := Report{
		RunID: r.cfg.RunID, Users: r.cfg.Users, Gateways: len(r.cfg.URLs), TargetRate: r.cfg.Rate,
		DurationSeconds: r.cfg.Duration.Seconds(), MaxInflight: r.cfg.MaxInflight, BodyBytes: r.cfg.BodyBytes,
		ConnectSeconds: round(connSeconds, 3),
		ConnectP50MS:   ms(r.connectHist.Quantile(0.5)), ConnectP99MS: ms(r.connectHist.Quantile(0.99)), ConnectMaxMS: ms(r.connectHist.Max()),
		Sent: r.sent.Load(), Acked: r.acked.Load(), Delivered: r.delivered.Load(), Duplicates: r.dups.Load(),
		Errors: r.errs.Load(), Misrouted: r.misrouted.Load(), ViaSync: r.viaSync.Load(), OwnSynced: r.ownSynced.Load(),
		SendLagMaxMS: ms(time.Duration(r.lagMax.Load())),
		AckP50MS:     ms(r.ackHist.Quantile(0.5)), AckP90MS: ms(r.ackHist.Quantile(0.9)), AckP99MS: ms(r.ackHist.Quantile(0.99)),
		AckMaxMS: ms(r.ackHist.Max()), AckMeanMS: ms(r.ackHist.Mean()),
		E2EP50MS: ms(r.e2eHist.Quantile(0.5)), E2EP90MS: ms(r.e2eHist.Quantile(0.9)), E2EP99MS: ms(r.e2eHist.Quantile(0.99)),
		E2EMaxMS: ms(r.e2eHist.Max()), E2EMeanMS: ms(r.e2eHist.Mean()),
	}
	t := r.count()
	rep.Lost, rep.DeliveredUnacked = t.lost, t.deliveredUnacked
	r.errMu.Lock()
	if len(r.byCode) > 0 {
		rep.ErrorsByCode = map[string]uint64{}
		for k, v := range r.byCode {
			rep.ErrorsByCode[k] = v
		}
	}
	r.errMu.Unlock()
	for _, c := range r.cl {
		if c != nil {
			rep.Reconnects += c.Reconnects()
			rep.ClientDupsDrop += c.Duplicates()
		}
	}
	if sendSeconds > 0 {
		rep.SentPerSecond = round(float64(rep.Sent)/sendSeconds, 1)
		last := time.Duration(r.lastDelivery.Load())
		if rep.Delivered > 0 && last > 0 {
			rep.DeliveredPerSecond = round(float64(rep.Delivered)/max(last.Seconds(), sendSeconds), 1)
			rep.DrainSeconds = round(max(0, last.Seconds()-sendSeconds), 3)
		}
		target := r.cfg.Rate * r.cfg.Duration.Seconds()
		rep.RateAchieved = float64(rep.Sent) >= 0.99*math.Floor(target) && rep.DeliveredPerSecond >= 0.95*r.cfg.Rate
	}
	return rep
}

// closeAll stops the receivers and closes every client, many at a time.
func (r *run) closeAll() {
	close(r.stop)
	r.recvWG.Wait()
	sem := make(chan struct{}, 256)
	var wg sync.WaitGroup
	for _, c := range r.cl {
		if c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() { defer func() { <-sem; wg.Done() }(); _ = c.Close() }()
	}
	wg.Wait()
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}
