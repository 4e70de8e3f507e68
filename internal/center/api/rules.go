package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/rules"
)

// The shapes below are those of Prometheus's web/api/v1.

type alertDiscovery struct {
	Alerts []*alert `json:"alerts"`
}

type alert struct {
	Labels          labels.Labels `json:"labels"`
	Annotations     labels.Labels `json:"annotations"`
	State           string        `json:"state"`
	ActiveAt        *time.Time    `json:"activeAt,omitempty"`
	KeepFiringSince *time.Time    `json:"keepFiringSince,omitempty"`
	Value           string        `json:"value"`
}

type ruleDiscovery struct {
	RuleGroups []*ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name           string    `json:"name"`
	File           string    `json:"file"`
	Rules          []any     `json:"rules"`
	Interval       float64   `json:"interval"`
	Limit          int       `json:"limit"`
	EvaluationTime float64   `json:"evaluationTime"`
	LastEvaluation time.Time `json:"lastEvaluation"`
}

type alertingRule struct {
	State          string           `json:"state"`
	Name           string           `json:"name"`
	Query          string           `json:"query"`
	Duration       float64          `json:"duration"`
	KeepFiringFor  float64          `json:"keepFiringFor"`
	Labels         labels.Labels    `json:"labels"`
	Annotations    labels.Labels    `json:"annotations"`
	Alerts         []*alert         `json:"alerts"`
	Health         rules.RuleHealth `json:"health"`
	LastError      string           `json:"lastError,omitempty"`
	EvaluationTime float64          `json:"evaluationTime"`
	LastEvaluation time.Time        `json:"lastEvaluation"`
	Type           string           `json:"type"`
}

type recordingRule struct {
	Name           string           `json:"name"`
	Query          string           `json:"query"`
	Labels         labels.Labels    `json:"labels"`
	Health         rules.RuleHealth `json:"health"`
	LastError      string           `json:"lastError,omitempty"`
	EvaluationTime float64          `json:"evaluationTime"`
	LastEvaluation time.Time        `json:"lastEvaluation"`
	Type           string           `json:"type"`
}

func toAPIAlerts(in []*rules.Alert) []*alert {
	out := make([]*alert, len(in))
	for i, a := range in {
		out[i] = &alert{
			Labels:      a.Labels,
			Annotations: a.Annotations,
			State:       a.State.String(),
			ActiveAt:    &a.ActiveAt,
			Value:       strconv.FormatFloat(a.Value, 'e', -1, 64),
		}
		if !a.KeepFiringSince.IsZero() {
			out[i].KeepFiringSince = &a.KeepFiringSince
		}
	}
	return out
}

func (a *API) alerts(*http.Request) result {
	list := []*alert{}
	if a.Rules != nil {
		for _, r := range a.Rules.AlertingRules() {
			list = append(list, toAPIAlerts(r.ActiveAlerts())...)
		}
	}
	return result{data: &alertDiscovery{Alerts: list}}
}

func (a *API) rules(r *http.Request) result {
	set := func(vals []string) map[string]bool {
		m := map[string]bool{}
		for _, v := range vals {
			m[v] = true
		}
		return m
	}
	names, groups, files := set(r.Form["rule_name[]"]), set(r.Form["rule_group[]"]), set(r.Form["file[]"])
	matcherSets, err := a.matchers(r.Form["match[]"])
	if err != nil {
		return result{err: &apiError{errorBadData, err}}
	}
	typ := strings.ToLower(r.URL.Query().Get("type"))
	if typ != "" && typ != "alert" && typ != "record" {
		return invalidParam(fmt.Errorf("not supported value %q", typ), "type")
	}
	excludeAlerts := false
	if v := r.URL.Query().Get("exclude_alerts"); v != "" {
		b, err := strconv.ParseBool(strings.ToLower(v))
		if err != nil {
			return invalidParam(fmt.Errorf("error converting exclude_alerts: %w", err), "exclude_alerts")
		}
		excludeAlerts = b
	}
	res := &ruleDiscovery{RuleGroups: []*ruleGroup{}}
	if a.Rules == nil {
		return result{data: res}
	}
	for _, g := range a.Rules.RuleGroups() {
		if len(groups) > 0 && !groups[g.Name()] || len(files) > 0 && !files[g.File()] {
			continue
		}
		rg := &ruleGroup{
			Name: g.Name(), File: g.File(), Interval: g.Interval().Seconds(), Limit: g.Limit(), Rules: []any{},
			EvaluationTime: g.GetEvaluationTime().Seconds(), LastEvaluation: g.GetLastEvaluation(),
		}
		for _, rr := range g.Rules(matcherSets...) {
			if len(names) > 0 && !names[rr.Name()] {
				continue
			}
			lastError := ""
			if err := rr.LastError(); err != nil {
				lastError = err.Error()
			}
			switch rule := rr.(type) {
			case *rules.AlertingRule:
				if typ == "record" {
					continue
				}
				var active []*alert
				if !excludeAlerts {
					active = toAPIAlerts(rule.ActiveAlerts())
				}
				rg.Rules = append(rg.Rules, alertingRule{
					State: rule.State().String(), Name: rule.Name(), Query: rule.Query().String(),
					Duration: rule.HoldDuration().Seconds(), KeepFiringFor: rule.KeepFiringFor().Seconds(),
					Labels: rule.Labels(), Annotations: rule.Annotations(), Alerts: active,
					Health: rule.Health(), LastError: lastError,
					EvaluationTime: rule.GetEvaluationDuration().Seconds(), LastEvaluation: rule.GetEvaluationTimestamp(),
					Type: "alerting",
				})
			case *rules.RecordingRule:
				if typ == "alert" {
					continue
				}
				rg.Rules = append(rg.Rules, recordingRule{
					Name: rule.Name(), Query: rule.Query().String(), Labels: rule.Labels(),
					Health: rule.Health(), LastError: lastError,
					EvaluationTime: rule.GetEvaluationDuration().Seconds(), LastEvaluation: rule.GetEvaluationTimestamp(),
					Type: "recording",
				})
			default:
				return result{err: &apiError{errorInternal, errors.New("failed to assert type of rule '" + rr.Name() + "'")}}
			}
		}
		if len(rg.Rules) > 0 {
			res.RuleGroups = append(res.RuleGroups, rg)
		}
	}
	return result{data: res}
}
