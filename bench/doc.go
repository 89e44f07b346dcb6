// Package bench measures comjobs against the limits around it, side by side
// in one run: the broker's own speed (a plain JetStream work queue), the floor
// of the consumer's job (pull, one POST to the COM simulator, ack) and that
// floor plus the one event the contract asks of every request, the cost of
// one ledger write, the tracker's COM calls against one GET per job per
// cycle, and the notifier's pace against Slack's one message per second per
// channel. The pipeline rows show the median of independent rounds, each on
// a server and simulator of its own, because one round's ratio moves by a
// tenth or more with the machine's noise.
//
// It holds no library code. TestBenchTable prints the comparison table:
//
//	go test -run TestBenchTable -bench.table -count=1 -v ./bench/
//
// (make bench). Without -bench.table it runs the same code at smoke sizes in
// the ordinary test suite, so the measurements never rot; it then asserts
// correctness (every request submitted once, every job tracked, every event
// posted or digested) but never speed. Numbers are printed, never asserted.
package bench
