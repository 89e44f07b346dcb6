// Package chaos holds the chaos suite of comjobs: it proves, with figures,
// that the promises of the design contract hold when comjobs runs the way
// operators run it and everything around it misbehaves.
//
// TestChaos starts a three-node JetStream cluster on loopback with R3 streams
// and buckets, the COM simulator answering a share of 429s, 5xx and slow
// calls, a recording Slack server answering some 429s, and two replicas each
// of the consumer, tracker and notifier roles as real `comjobs run` processes.
// While it publishes valid requests and a corpus of hostile ones
// (testdata/hostile.jsonl) it SIGKILLs consumers, the active tracker and a
// notifier, restarts NATS servers and SIGTERMs a process mid-batch. Then it
// checks, request by request, against the simulator's own records: exactly
// one COM job per valid request, published states an in-order subsequence of
// each job's real history ending in its real final state, no observation
// published twice, one Slack terminal message per job and one alert per
// STALLED episode, exactly the hostile requests dead-lettered with their
// reasons, and nothing left running.
//
// The package has no non-test code: it exists so the suite has a home of its
// own, apart from the packages it exercises. `make test` runs a short
// version; `make chaos` runs 10,000 requests (-chaos.requests).
package chaos
