package traces

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // OTLP/gRPC senders may gzip
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// GRPCServer is the OTLP/gRPC receiver on a port of its own.
type GRPCServer struct {
	coltracepb.UnimplementedTraceServiceServer
	recv  *Receiver
	token func() string
	srv   *grpc.Server
	ln    net.Listener
	log   *slog.Logger
	done  chan struct{}
}

// ListenGRPC serves OTLP/gRPC's TraceService on addr, feeding recv. token
// gives the bearer token callers must send ("" for none); maxMsg bounds a
// request's decompressed size.
func ListenGRPC(addr string, recv *Receiver, token func() string, maxMsg int, log *slog.Logger) (*GRPCServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("otlp/grpc listen %s: %w", addr, err)
	}
	g := &GRPCServer{recv: recv, token: token, ln: ln, log: log, done: make(chan struct{})}
	g.srv = grpc.NewServer(grpc.MaxRecvMsgSize(maxMsg), grpc.MaxConcurrentStreams(16))
	coltracepb.RegisterTraceServiceServer(g.srv, g)
	go func() {
		defer close(g.done)
		if err := g.srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("otlp/grpc server", "err", err)
		}
	}()
	log.Info("otlp/grpc listening", "addr", ln.Addr().String())
	return g, nil
}

// Addr is the address the server listens on.
func (g *GRPCServer) Addr() string { return g.ln.Addr().String() }

// Stop finishes the calls in flight and stops.
func (g *GRPCServer) Stop() {
	stopped := make(chan struct{})
	go func() { g.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		g.srv.Stop()
	}
	<-g.done
}

// Export implements TraceServiceServer.
func (g *GRPCServer) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	start := time.Now()
	defer func() { g.recv.m.duration.WithLabelValues("grpc").Observe(time.Since(start).Seconds()) }()
	if tok := g.token(); tok != "" {
		md, _ := metadata.FromIncomingContext(ctx)
		got := ""
		if v := md.Get("authorization"); len(v) > 0 {
			got, _ = strings.CutPrefix(v[0], "Bearer ")
		}
		if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(tok)) != 1 {
			res := result{grpc: codes.Unauthenticated}
			g.recv.count("grpc", codes.Unauthenticated.String(), res)
			return nil, status.Error(codes.Unauthenticated, "missing or wrong bearer token (metadata authorization: Bearer TOKEN)")
		}
	}
	res := g.recv.export(ctx, req, proto.Size(req))
	g.recv.count("grpc", res.grpc.String(), res)
	if res.grpc != codes.OK {
		if res.grpc == codes.Internal {
			g.log.Error("otlp/grpc", "err", res.msg)
		}
		return nil, status.Error(res.grpc, res.msg)
	}
	resp := &coltracepb.ExportTraceServiceResponse{}
	if res.dropped > 0 {
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: int64(res.dropped), ErrorMessage: res.dropMsg}
	}
	return resp, nil
}
