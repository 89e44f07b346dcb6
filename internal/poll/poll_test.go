package poll

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// fatalTB records Fatalf and ends the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestUntilReturnsOnceTrue(t *testing.T) {
	tries := 0
	Until(t, time.Minute, "third try", func() (bool, string) { tries++; return tries == 3, "" })
	if tries != 3 {
		t.Errorf("cond called %d times, want 3", tries)
	}
}

func TestUntilFailsWithTheLastState(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  func(*fatalTB)
		want string
	}{
		{"with state", func(f *fatalTB) {
			n := 0
			Until(f, 50*time.Millisecond, "never", func() (bool, string) { n++; return false, fmt.Sprintf("try %d", n) })
		}, "never: not within 50ms: try "},
		{"without state", func(f *fatalTB) { True(f, 30*time.Millisecond, "nothing", func() bool { return false }) }, "nothing: not within 30ms"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fatalTB{}
			done := make(chan struct{})
			go func() { defer close(done); tt.run(f) }()
			<-done
			if !strings.HasPrefix(f.msg, tt.want) || (tt.name == "without state" && f.msg != tt.want) {
				t.Errorf("Fatalf said %q, want %q…", f.msg, tt.want)
			}
		})
	}
}
