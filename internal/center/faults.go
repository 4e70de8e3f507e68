package center

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	promstorage "github.com/prometheus/prometheus/storage"

	"github.com/imwatch/imwatch/internal/center/api"
	"github.com/imwatch/imwatch/internal/fault"
)

// maxFaultBody bounds a POST /api/faults body.
const maxFaultBody = 4 << 10

// faultSide is the center's fault registry and what writes its state into
// the store, once EnableFaults gave it a controller.
type faultSide struct {
	ctl  fault.Controller
	reg  *fault.Registry
	stop chan struct{}
	done chan struct{}
}

// EnableFaults makes the center take faults (POST/GET /api/faults,
// DELETE /api/faults/ID) and hand them to the IM through ctl. Call it
// before Start; without it the center serves no fault API.
func (c *Center) EnableFaults(ctl fault.Controller) {
	c.faults = &faultSide{ctl: ctl}
}

// Faults is the fault registry; nil when faults are off or before Start.
func (c *Center) Faults() *fault.Registry {
	if c.faults == nil {
		return nil
	}
	return c.faults.reg
}

func (c *Center) startFaults() {
	fs := c.faults
	if fs == nil {
		return
	}
	fs.reg = fault.NewRegistry(fs.ctl, c.reg, fault.Options{Log: c.base.With("component", "faults")})
	fs.reg.Start()
	fs.stop, fs.done = make(chan struct{}), make(chan struct{})
	go c.recordFaults(fs)
}

func (c *Center) stopFaults() {
	fs := c.faults
	if fs == nil || fs.reg == nil {
		return
	}
	fs.reg.Stop()
	close(fs.stop)
	<-fs.done
}

// recordFaults writes imwatch_fault_active{kind,hop,instance} into the
// center's own store every second while a fault is active, and a staleness
// marker when it ends, so that rules, the UI and PromQL see the faults on
// the same time axis as everything else.
func (c *Center) recordFaults(fs *faultSide) {
	defer close(fs.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := map[string]labels.Labels{}
	write := func() {
		now := time.Now().UnixMilli()
		app := c.store.AppenderV2(context.Background())
		seen := map[string]bool{}
		for _, f := range fs.reg.List(false) {
			b := labels.NewBuilder(labels.FromStrings(labels.MetricName, "imwatch_fault_active", "kind", string(f.Kind), "instance", f.Instance))
			b.Set("hop", f.Hop.String()) // "" (stop, blackhole): no hop label
			ls := b.Labels()
			key := ls.String()
			seen[key] = true
			last[key] = ls
			_, _ = app.Append(0, ls, 0, now, 1, nil, nil, promstorage.AOptions{})
		}
		for key, ls := range last {
			if !seen[key] {
				_, _ = app.Append(0, ls, 0, now, math.Float64frombits(value.StaleNaN), nil, nil, promstorage.AOptions{})
				delete(last, key)
			}
		}
		if err := app.Commit(); err != nil {
			c.log.Warn("record faults", "err", err)
		}
	}
	for {
		select {
		case <-fs.stop:
			write() // the registry cleared everything: staleness markers
			return
		case <-t.C:
			write()
		}
	}
}

func (c *Center) faultRoutes(mux *http.ServeMux, auth func(http.Handler) http.Handler) {
	if c.faults == nil {
		return
	}
	mux.Handle("GET /api/faults", auth(http.HandlerFunc(c.serveFaultList)))
	mux.Handle("POST /api/faults", auth(http.HandlerFunc(c.serveFaultAdd)))
	mux.Handle("GET /api/faults/{id}", auth(http.HandlerFunc(c.serveFaultGet)))
	mux.Handle("DELETE /api/faults/{id}", auth(http.HandlerFunc(c.serveFaultClear)))
	mux.Handle("POST /api/faults/{id}/clear", auth(http.HandlerFunc(c.serveFaultClear)))
}

// faultList is the answer of GET /api/faults.
type faultList struct {
	Faults    []fault.Fault    `json:"faults"`
	Instances []fault.Instance `json:"instances"`
}

func (c *Center) serveFaultList(w http.ResponseWriter, r *http.Request) {
	past := true
	switch s := r.URL.Query().Get("state"); s {
	case "", "all":
	case fault.StateActive:
		past = false
	default:
		api.WriteError(w, http.StatusBadRequest, "bad_data", fmt.Sprintf("invalid parameter \"state\": %q: want active or all", s))
		return
	}
	reg := c.faults.reg
	writeFaultJSON(w, http.StatusOK, faultList{Faults: nonNil(reg.List(past)), Instances: nonNil(reg.Instances())})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (c *Center) serveFaultGet(w http.ResponseWriter, r *http.Request) {
	f, ok := c.faults.reg.Get(r.PathValue("id"))
	if !ok {
		api.WriteError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no fault %q (ended faults are kept for the last %d)", r.PathValue("id"), 200))
		return
	}
	writeFaultJSON(w, http.StatusOK, map[string]fault.Fault{"fault": f})
}

func (c *Center) serveFaultAdd(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			api.WriteError(w, http.StatusUnsupportedMediaType, "bad_data", fmt.Sprintf("Content-Type %q: send the fault as application/json", ct))
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFaultBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			api.WriteError(w, http.StatusRequestEntityTooLarge, "bad_data", fmt.Sprintf("fault request over %d bytes", maxFaultBody))
			return
		}
		api.WriteError(w, http.StatusBadRequest, "bad_data", "read body: "+err.Error())
		return
	}
	spec, err := DecodeFaultSpec(body)
	if err != nil {
		api.WriteError(w, http.StatusBadRequest, "bad_data", err.Error())
		return
	}
	f, err := c.faults.reg.Add(spec)
	switch {
	case errors.Is(err, fault.ErrInvalid):
		api.WriteError(w, http.StatusBadRequest, "bad_data", err.Error())
		return
	case errors.Is(err, fault.ErrConflict):
		api.WriteError(w, http.StatusConflict, "conflict", err.Error())
		return
	case errors.Is(err, fault.ErrTooMany):
		api.WriteError(w, http.StatusTooManyRequests, "too_many", err.Error())
		return
	case err != nil:
		api.WriteError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	w.Header().Set("Location", "/api/faults/"+f.ID)
	writeFaultJSON(w, http.StatusCreated, map[string]fault.Fault{"fault": f})
}

// DecodeFaultSpec reads the body of POST /api/faults: one JSON object with
// the fields of fault.Spec and no others.
func DecodeFaultSpec(body []byte) (fault.Spec, error) {
	var spec fault.Spec
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return fault.Spec{}, fmt.Errorf("%w: body: %v (want e.g. {\"kind\":\"drop\",\"hop\":\"gateway.receive\",\"instance\":\"gw-1\",\"percent\":100,\"duration\":\"2m\"})", fault.ErrInvalid, err)
	}
	if dec.More() {
		return fault.Spec{}, fmt.Errorf("%w: body: one JSON object only", fault.ErrInvalid)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fault.Spec{}, fmt.Errorf("%w: body: data after the JSON object", fault.ErrInvalid)
	}
	return spec, nil
}

func (c *Center) serveFaultClear(w http.ResponseWriter, r *http.Request) {
	f, err := c.faults.reg.Clear(r.PathValue("id"))
	if errors.Is(err, fault.ErrNotFound) {
		api.WriteError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	writeFaultJSON(w, http.StatusOK, map[string]fault.Fault{"fault": f})
}

func writeFaultJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
