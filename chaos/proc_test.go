package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildBinary builds cmd/comjobs (without the race detector: the children
// are ordinary binaries) into dir.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found: %v", err)
	}
	bin := filepath.Join(dir, "comjobs")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/comjobs/comjobs/cmd/comjobs")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build comjobs: %v\n%s", err, out)
	}
	return bin
}

// probeClient reads the children's /readyz and /metrics. Without
// keep-alives it leaves no connection goroutines behind.
var probeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}

// proc is one `comjobs run --roles <role>` child process. Restarts keep its
// name, HTTP port and log file.
type proc struct {
	name, role string
	bin        string
	env        []string
	httpAddr   string
	logPath    string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when the current run exited
	state  *os.ProcessState
	starts int
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start runs the process; its stdout and stderr are appended to its log.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !closed(p.done) {
		return fmt.Errorf("%s: already running", p.name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(logf, "\n===== start %d of %s at %s =====\n", p.starts, p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, "run", "--roles", p.role)
	cmd.Env = append(append([]string(nil), p.env...), "COMJOBS_HTTP_ADDR="+p.httpAddr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("%s: start: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.state = cmd, done, nil
	go func() {
		_ = cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// running reports whether the current run has not exited.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !closed(p.done)
}

// signal sends sig and waits up to wait for the exit; it returns the exit
// state.
func (p *proc) signal(sig os.Signal, wait time.Duration) (*os.ProcessState, error) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil, fmt.Errorf("%s: never started", p.name)
	}
	if closed(done) {
		return nil, fmt.Errorf("%s: not running", p.name)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return nil, fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	select {
	case <-done:
	case <-time.After(wait):
		return nil, fmt.Errorf("%s: still running %s after %v", p.name, wait, sig)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, nil
}

// kill SIGKILLs the process and waits for it.
func (p *proc) kill() error {
	_, err := p.signal(syscall.SIGKILL, 10*time.Second)
	return err
}

// term SIGTERMs the process and waits for it to drain; a clean exit is
// status 0.
func (p *proc) term(wait time.Duration) error {
	st, err := p.signal(syscall.SIGTERM, wait)
	if err != nil {
		return err
	}
	if !st.Success() {
		return fmt.Errorf("%s: exited with %v after SIGTERM (log %s)", p.name, st, p.logPath)
	}
	return nil
}

// waitReady polls /readyz until it answers 200.
func (p *proc) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAddr+"/readyz", nil)
		resp, err := probeClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		if !p.running() {
			return fmt.Errorf("%s exited before it was ready (log %s)", p.name, p.logPath)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v (log %s)", p.name, err, p.logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metric reads one unlabelled gauge or counter from /metrics.
func (p *proc) metric(ctx context.Context, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAddr+"/metrics", nil)
	resp, err := probeClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New(name + " not found")
}
