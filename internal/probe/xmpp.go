package probe

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"mellium.im/sasl"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"
)

// xmppDriver probes an XMPP server as a client (RFC 6120, RFC 6121): a
// probe account logs in (STARTTLS, SASL SCRAM-SHA-256, SCRAM-SHA-1 or
// PLAIN, resource binding), sends initial presence and sends chat messages
// to the full JID of the receiving connection, asking for a delivery
// receipt (XEP-0184). XMPP has no per-message server ack without stream
// management, so the ack is the server's answer to a ping (XEP-0199) sent
// right after the message: a server handles a stream's stanzas in order,
// so when it answers the ping it has routed the message.
//
// The library is mellium.im/xmpp: maintained (releases through 2024, a
// stream and stanza layer on encoding/xml, SCRAM through mellium.im/sasl),
// where gosrc.io/xmpp has had no release since 2020.
type xmppDriver struct{}

var saslMechanisms = map[string]sasl.Mechanism{
	"SCRAM-SHA-256": sasl.ScramSha256,
	"SCRAM-SHA-1":   sasl.ScramSha1,
	"PLAIN":         sasl.Plain,
}

const receiptsNS = "urn:xmpp:receipts"

func (xmppDriver) Open(ctx context.Context, req OpenRequest) (Endpoint, error) {
	t := req.Target
	bare, err := jid.Parse(req.Account.User)
	if err != nil {
		return nil, failf(ReasonAuth, "account %q is not a JID: %v", req.Account.User, err)
	}
	resource := "imwatch-" + strings.ReplaceAll(req.Name, ".", "-")
	origin, err := bare.WithResource(resource)
	if err != nil {
		return nil, failf(ReasonAuth, "resource for %s: %v", req.Account.User, err)
	}
	start := time.Now()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.Address)
	if err != nil {
		return nil, fail(ReasonConnect, err)
	}
	connected := time.Now()
	var features []xmpp.StreamFeature
	if t.StartTLSOn() {
		tlsCfg, err := clientTLS(t.TLS, net.JoinHostPort(bare.Domainpart(), "0"))
		if err != nil {
			conn.Close()
			return nil, fail(ReasonConnect, err)
		}
		features = append(features, xmpp.StartTLS(tlsCfg))
	}
	var mechs []sasl.Mechanism
	for _, m := range t.SASLMechanisms {
		mechs = append(mechs, saslMechanisms[m])
	}
	features = append(features, xmpp.SASL("", string(req.Account.Password), mechs...), xmpp.BindResource())
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	s, err := xmpp.NewClientSession(ctx, origin, conn, features...)
	if err != nil {
		conn.Close()
		return nil, classifyXMPP(err)
	}
	_ = conn.SetDeadline(time.Time{})
	e := &xmppEndpoint{s: s, deliver: req.Deliver, lost: newLost()}
	go func() {
		err := s.Serve(xmpp.HandlerFunc(e.handle))
		if err != nil && req.Log != nil {
			req.Log.Debug("xmpp session ended", "connection", req.Name, "err", err)
		}
		e.lost.close()
	}()
	if err := s.Send(ctx, stanza.Presence{Type: stanza.AvailablePresence}.Wrap(nil)); err != nil {
		e.Close()
		return nil, fail(ReasonConnect, fmt.Errorf("initial presence: %w", err))
	}
	if req.Timing != nil {
		req.Timing.Connect, req.Timing.Login = connected.Sub(start), time.Since(connected)
	}
	return e, nil
}

// classifyXMPP tells a refused login from a broken connection. The SASL
// library's errors name the condition (not-authorized), never the password.
func classifyXMPP(err error) error {
	// The library's SASL failure type is internal: know it by its name.
	for e := err; e != nil; e = errors.Unwrap(e) {
		if fmt.Sprintf("%T", e) == "saslerr.Error" {
			return fail(ReasonAuth, fmt.Errorf("XMPP login refused: %w", err))
		}
	}
	if strings.Contains(err.Error(), "no matching SASL mechanisms") {
		return fail(ReasonAuth, fmt.Errorf("XMPP login refused: %w", err))
	}
	return fail(ReasonConnect, fmt.Errorf("XMPP stream negotiation: %w", err))
}

type xmppEndpoint struct {
	s       *xmpp.Session
	deliver func(Delivery)
	lost    lostChan
	once    sync.Once
}

func (e *xmppEndpoint) Address() string       { return e.s.LocalAddr().String() }
func (e *xmppEndpoint) Lost() <-chan struct{} { return e.lost.ch }

// chatMessage is a message stanza with what the prober reads and writes.
type chatMessage struct {
	stanza.Message
	Body     string        `xml:"body,omitempty"`
	Request  *struct{}     `xml:"urn:xmpp:receipts request,omitempty"`
	Received *receiptReply `xml:"urn:xmpp:receipts received,omitempty"`
}

type receiptReply struct {
	ID string `xml:"id,attr"`
}

// handle reads one top-level element of the stream; Serve answers IQs it
// leaves alone with service-unavailable.
func (e *xmppEndpoint) handle(t xmlstream.TokenReadEncoder, start *xml.StartElement) error {
	if start.Name.Local != "message" {
		return nil
	}
	at := time.Now()
	var m chatMessage
	// The token stream of one stanza ends at its end element, which the
	// decoder then reports as unexpected: what it decoded is whole.
	if err := xml.NewTokenDecoder(t).DecodeElement(&m, start); err != nil && !errors.Is(err, io.EOF) && m.Body == "" && m.Received == nil {
		return nil
	}
	if m.Received != nil {
		if seq, ok := strings.CutPrefix(m.Received.ID, "probe-"); ok {
			if n, err := strconv.ParseUint(seq, 10, 64); err == nil {
				e.deliver(Delivery{Receipt: true, Seq: n, At: at})
			}
		}
		return nil
	}
	if m.Body == "" || m.Type == stanza.ErrorMessage {
		return nil
	}
	e.deliver(Delivery{Body: m.Body, At: at})
	if m.Request != nil && m.ID != "" {
		return t.Encode(chatMessage{
			Message:  stanza.Message{To: m.From, Type: m.Type},
			Received: &receiptReply{ID: m.ID},
		})
	}
	return nil
}

func (e *xmppEndpoint) Send(ctx context.Context, to string, m Message) error {
	dest, err := jid.Parse(to)
	if err != nil {
		return fail(ReasonSend, err)
	}
	msg := chatMessage{
		Message: stanza.Message{To: dest, Type: stanza.ChatMessage, ID: "probe-" + strconv.FormatUint(m.Seq, 10)},
		Body:    m.Body(),
		Request: &struct{}{},
	}
	if err := e.s.Encode(ctx, msg); err != nil {
		if ctx.Err() != nil {
			return fail(ReasonAckTimeout, errors.New("the XMPP server took no message in time"))
		}
		return fail(ReasonSend, err)
	}
	if err := ping.Send(ctx, e.s, e.s.LocalAddr().Domain()); err != nil {
		if ctx.Err() != nil {
			return fail(ReasonAckTimeout, errors.New("no answer from the XMPP server in time"))
		}
		return fail(ReasonSend, fmt.Errorf("ping after the message: %w", err))
	}
	return nil
}

func (e *xmppEndpoint) Close() error {
	e.once.Do(func() {
		_ = e.s.Close()
		_ = e.s.Conn().Close()
		e.lost.close()
	})
	return nil
}
