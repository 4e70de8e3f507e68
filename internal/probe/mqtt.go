package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// mqttDriver probes an MQTT broker at QoS 1: each connection subscribes to
// its own topic (topic_prefix/NAME) and a probe message is published to the
// receiver's topic. The server's ack is the PUBACK. MQTT 5 goes through
// eclipse/paho.golang, which carries the traceparent as a user property;
// MQTT 3.1.1 through eclipse/paho.mqtt.golang (no properties: the trace
// context is only in the body there).
type mqttDriver struct{}

const mqttKeepAlive = 30 // seconds

func (mqttDriver) Open(ctx context.Context, req OpenRequest) (Endpoint, error) {
	t := req.Target
	useTLS, hostport, err := splitMQTTAddress(t.Address)
	if err != nil {
		return nil, fail(ReasonConnect, err)
	}
	var tlsCfg *tls.Config
	if useTLS {
		if tlsCfg, err = clientTLS(t.TLS, hostport); err != nil {
			return nil, fail(ReasonConnect, err)
		}
	}
	e := &mqttEndpoint{
		topic:    t.TopicPrefix + "/" + req.Name,
		clientID: mqttClientID(req.Name),
		deliver:  req.Deliver,
		lost:     newLost(),
	}
	if t.MQTTVersion == "3.1.1" {
		err = e.open3(ctx, req, hostport, tlsCfg)
	} else {
		err = e.open5(ctx, req, hostport, tlsCfg)
	}
	if err != nil {
		return nil, err
	}
	return e, nil
}

// mqttClientID is a client id unique to the connection; brokers that cap
// ids at 23 characters (3.1.1's minimum) get a hash of the long one.
func mqttClientID(name string) string {
	return "imwatch-" + strings.ReplaceAll(name, ".", "-")
}

type mqttEndpoint struct {
	topic    string
	clientID string
	deliver  func(Delivery)
	lost     lostChan

	c5 *paho.Client
	c3 paho3.Client

	closeOnce sync.Once
}

func (e *mqttEndpoint) Address() string       { return e.topic }
func (e *mqttEndpoint) Lost() <-chan struct{} { return e.lost.ch }

func dialTCP(ctx context.Context, hostport string, tlsCfg *tls.Config) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	if tlsCfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return tc, nil
}

func (e *mqttEndpoint) open5(ctx context.Context, req OpenRequest, hostport string, tlsCfg *tls.Config) error {
	start := time.Now()
	conn, err := dialTCP(ctx, hostport, tlsCfg)
	if err != nil {
		return fail(ReasonConnect, err)
	}
	connected := time.Now()
	c := paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			at := time.Now()
			d := Delivery{Body: string(pr.Packet.Payload), At: at}
			if pr.Packet.Properties != nil {
				d.Trace = pr.Packet.Properties.User.Get("traceparent")
			}
			e.deliver(d)
			return true, nil
		}},
		OnClientError:      func(error) { e.lost.close() },
		OnServerDisconnect: func(*paho.Disconnect) { e.lost.close() },
	})
	cp := &paho.Connect{ClientID: e.clientID, KeepAlive: mqttKeepAlive, CleanStart: true}
	if u := req.Account.User; u != "" {
		cp.Username, cp.UsernameFlag = u, true
	}
	if pw := req.Account.Password; pw != "" {
		cp.Password, cp.PasswordFlag = []byte(pw), true
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		conn.Close()
		if ca != nil {
			switch ca.ReasonCode {
			case 0x86, 0x87, 0x8C: // bad user name or password, not authorized, bad authentication method
				return failf(ReasonAuth, "MQTT broker refused the login (reason code 0x%02x)", ca.ReasonCode)
			}
			return failf(ReasonConnect, "MQTT broker refused the connection (reason code 0x%02x)", ca.ReasonCode)
		}
		return fail(ReasonConnect, err)
	}
	e.c5 = c
	go func() { <-c.Done(); e.lost.close() }()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: e.topic, QoS: 1}}}); err != nil {
		e.Close()
		return fail(ReasonConnect, fmt.Errorf("subscribe %s: %w", e.topic, err))
	}
	if req.Timing != nil {
		req.Timing.Connect, req.Timing.Login = connected.Sub(start), time.Since(connected)
	}
	return nil
}

func (e *mqttEndpoint) open3(ctx context.Context, req OpenRequest, hostport string, tlsCfg *tls.Config) error {
	var connectDur time.Duration
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	opts := paho3.NewClientOptions().
		AddBroker("tcp://" + hostport).
		SetClientID(e.clientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetKeepAlive(mqttKeepAlive * time.Second).
		SetConnectTimeout(timeout).
		SetWriteTimeout(timeout).
		SetConnectionLostHandler(func(paho3.Client, error) { e.lost.close() }).
		SetCustomOpenConnectionFn(func(*url.URL, paho3.ClientOptions) (net.Conn, error) {
			start := time.Now()
			conn, err := dialTCP(ctx, hostport, tlsCfg)
			connectDur = time.Since(start)
			return conn, err
		})
	if u := req.Account.User; u != "" {
		opts.SetUsername(u)
	}
	if pw := req.Account.Password; pw != "" {
		opts.SetPassword(string(pw))
	}
	start := time.Now()
	c := paho3.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(timeout) {
		c.Disconnect(0)
		return failf(ReasonConnect, "no CONNACK from the MQTT broker within %s", timeout)
	}
	if err := tok.Error(); err != nil {
		if errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) || errors.Is(err, packets.ErrorRefusedNotAuthorised) {
			return fail(ReasonAuth, fmt.Errorf("MQTT broker refused the login: %w", err))
		}
		return fail(ReasonConnect, err)
	}
	total := time.Since(start)
	e.c3 = c
	sub := c.Subscribe(e.topic, 1, func(_ paho3.Client, m paho3.Message) {
		e.deliver(Delivery{Body: string(m.Payload()), At: time.Now()})
	})
	if !sub.WaitTimeout(timeout) || sub.Error() != nil {
		e.Close()
		return failf(ReasonConnect, "subscribe %s: %v", e.topic, sub.Error())
	}
	if req.Timing != nil {
		req.Timing.Connect, req.Timing.Login = connectDur, max(total-connectDur, 0)
	}
	return nil
}

func (e *mqttEndpoint) Send(ctx context.Context, to string, m Message) error {
	if e.c5 != nil {
		p := &paho.Publish{Topic: to, QoS: 1, Payload: []byte(m.Body())}
		if m.Trace != "" {
			p.Properties = &paho.PublishProperties{User: paho.UserProperties{{Key: "traceparent", Value: m.Trace}}}
		}
		pr, err := e.c5.Publish(ctx, p)
		if err != nil {
			if ctx.Err() != nil {
				return fail(ReasonAckTimeout, errors.New("no PUBACK from the MQTT broker in time"))
			}
			return fail(ReasonSend, err)
		}
		if pr != nil && pr.ReasonCode >= 0x80 {
			return failf(ReasonSend, "MQTT broker refused the publish (reason code 0x%02x)", pr.ReasonCode)
		}
		return nil
	}
	tok := e.c3.Publish(to, 1, false, []byte(m.Body()))
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fail(ReasonSend, err)
		}
		return nil
	case <-ctx.Done():
		return fail(ReasonAckTimeout, errors.New("no PUBACK from the MQTT broker in time"))
	}
}

func (e *mqttEndpoint) Close() error {
	e.closeOnce.Do(func() {
		if e.c5 != nil {
			_ = e.c5.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
		if e.c3 != nil {
			e.c3.Disconnect(100)
		}
		e.lost.close()
	})
	return nil
}

// clientTLS is the TLS config of a connection to hostport.
func clientTLS(c TLS, hostport string) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(hostport)
	cfg := &tls.Config{ServerName: host, InsecureSkipVerify: c.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if c.ServerName != "" {
		cfg.ServerName = c.ServerName
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file %s: no PEM certificate in it", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
