//go:build !race

package tracker_test

// raceEnabled is true under -race, where the tracker's CPU cost is many
// times higher and the bulk test uses fewer jobs.
const raceEnabled = false
