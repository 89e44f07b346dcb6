package tracker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/schemas"
)

type metrics struct {
	jobs          *prometheus.GaugeVec
	calls         *prometheus.CounterVec
	latency       prometheus.Histogram
	published     *prometheus.CounterVec
	leader        prometheus.Gauge
	leaderChanges prometheus.Counter
	cycle         prometheus.Histogram
	webhooks      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "comjobs_tracker_jobs", Help: "Tracked jobs by last observed state (as seen by the lease holder).",
		}, []string{"state"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_tracker_com_calls_total", Help: "COM calls made by the tracker, by route (list, get) and HTTP status.",
		}, []string{"route", "status"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "comjobs_tracker_detection_latency_seconds", Help: "Time from a job's updatedAt in COM to the tracker observing the change.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 16),
		}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_tracker_events_published_total", Help: "Events the tracker published (duplicates dropped by the stream not counted), by type.",
		}, []string{"type"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "comjobs_tracker_leader", Help: "1 while this replica holds the poll lease.",
		}),
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_tracker_leadership_changes_total", Help: "Times this replica acquired the poll lease.",
		}),
		cycle: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "comjobs_tracker_poll_cycle_seconds", Help: "Duration of v1 list poll cycles.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_tracker_webhooks_total", Help: "COM webhook requests by outcome.",
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{m.jobs, m.calls, m.latency, m.published, m.leader, m.leaderChanges, m.cycle, m.webhooks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// gaugeStates sets the jobs gauge from the index's counts.
func (t *Tracker) gaugeStates() {
	counts := map[string]int{}
	for _, s := range []string{schemas.StatePending, schemas.StateApprovalPending, schemas.StateRunning, schemas.StateStalled, schemas.StateComplete, schemas.StateError, schemas.StateLost} {
		counts[s] = 0
	}
	t.mu.Lock()
	for s, n := range t.states {
		if s == "" {
			s = "UNOBSERVED"
		}
		counts[s] += n
	}
	t.mu.Unlock()
	for s, n := range counts {
		t.m.jobs.WithLabelValues(s).Set(float64(n))
	}
}
