package notify

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	messages    *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	paused      prometheus.Gauge
	digests     prometheus.Counter
	latency     *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_notifier_messages_total",
			Help: "Notifications by sink, kind and result (posted, duplicate, dead_letter, retry, paused).",
		}, []string{"sink", "kind", "result"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_notifier_dead_letters_total",
			Help: "Events the notifier dead-lettered, by reason.",
		}, []string{"reason"}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "comjobs_notifier_paused",
			Help: "1 while the notifier is paused by a broken sink setup (bad token, revoked webhook).",
		}),
		digests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_notifier_digests_total",
			Help: "Digest messages posted instead of one message per child job.",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "comjobs_notifier_post_latency_seconds",
			Help:    "Time the sink took to post one message (pacing excluded).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"sink"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.messages, m.deadLetters, m.paused, m.digests, m.latency} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
