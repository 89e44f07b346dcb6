package consumer

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests    prometheus.Counter
	submitted   prometheus.Counter
	rejected    *prometheus.CounterVec
	duplicates  prometheus.Counter
	retries     prometheus.Counter
	rateWaits   prometheus.Counter
	deadLetters *prometheus.CounterVec
	comLatency  prometheus.Histogram
	paused      prometheus.Gauge
	alone       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_consumer_requests_total", Help: "Request messages handled (every delivery)."}),
		submitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_consumer_submitted_total", Help: "Requests that became a COM job and a submitted event."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_consumer_rejected_total", Help: "Requests rejected, by reason."}, []string{"reason"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_consumer_duplicates_total", Help: "Deliveries of requests already submitted or rejected."}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_consumer_retries_total", Help: "Deliveries handed back with NakWithDelay."}),
		rateWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "comjobs_consumer_rate_limit_waits_total", Help: "Creates COM rate-limited before taking anything, tried again within the same delivery."}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_consumer_dead_letters_total", Help: "Messages copied to the dead-letter stream, by reason."}, []string{"reason"}),
		comLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "comjobs_consumer_com_latency_seconds", Help: "Latency of COM calls made by the consumer.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "comjobs_consumer_paused", Help: "1 while submission is paused (by hand or by a COM configuration fault)."}),
		alone: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "comjobs_consumer_alone_total", Help: "Requests that left their batch and went on alone, by the batch's step " +
				"(start: not a valid fresh request; claim; create: the create failed; slow-create: it outlasted the batch's wait; owner; event; ledger)."},
			[]string{"step"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.submitted, m.rejected, m.duplicates, m.retries, m.rateWaits, m.deadLetters, m.comLatency, m.paused, m.alone} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
