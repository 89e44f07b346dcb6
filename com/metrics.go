package com

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Route labels: templates, never raw ids.
const (
	routeJobs  = "/jobs"
	routeJob   = "/jobs/{id}"
	routeToken = "/token"
)

// metrics are the client's collectors, registered on the injected registerer.
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	remaining     prometheus.Gauge
	tokenRenewals prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "com_requests_total",
			Help: "HTTP requests made to COM, by route template, method and status code (\"error\" when no answer came).",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "com_request_duration_seconds",
			Help:    "Duration of HTTP requests to COM, by route template and method.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route", "method"}),
		remaining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "com_ratelimit_remaining",
			Help: "Calls left in COM's current rate-limit window, as COM last reported it.",
		}),
		tokenRenewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "com_token_renewals_total",
			Help: "Access tokens obtained from the token endpoint.",
		}),
	}
	var err error
	m.requests, err = register(reg, m.requests)
	if err != nil {
		return nil, err
	}
	if m.duration, err = register(reg, m.duration); err != nil {
		return nil, err
	}
	if m.remaining, err = register(reg, m.remaining); err != nil {
		return nil, err
	}
	if m.tokenRenewals, err = register(reg, m.tokenRenewals); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or reuses the identical collector already
// registered (several clients may share a registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *metrics) observe(route, method, code string, d time.Duration) {
	m.requests.WithLabelValues(route, method, code).Inc()
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}
