package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
)

// containerLogs serves `kubectl logs` (through the apiserver) from the per-container log files.
func (p *provider) containerLogs(ctx context.Context, namespace, pod, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	dir := ""
	p.mu.Lock()
	if pr, ok := p.pods[podKey(namespace, pod)]; ok {
		dir = pr.logDir
	}
	p.mu.Unlock()
	if dir == "" {
		// A pod that is already gone: its newest log directory.
		m, _ := filepath.Glob(filepath.Join(p.cfg.stateDir, "logs", namespace+"_"+pod+"_*"))
		sort.Slice(m, func(i, j int) bool { return modTime(m[i]).Before(modTime(m[j])) })
		if len(m) == 0 {
			return nil, fmt.Errorf("no logs for pod %s/%s", namespace, pod)
		}
		dir = m[len(m)-1]
	}
	path := filepath.Join(dir, container+".log")
	if opts.Previous {
		path += ".previous"
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("no logs for container %s of pod %s/%s: %w", container, namespace, pod, err)
	}
	if opts.Tail > 0 {
		if err := seekTail(f, opts.Tail); err != nil {
			f.Close()
			return nil, err
		}
	}
	var r io.ReadCloser = f
	if opts.Follow && !opts.Previous {
		r = &follower{f: f, ctx: ctx, alive: func() bool { return p.running(namespace, pod, container) }}
	}
	if opts.LimitBytes > 0 {
		r = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(r, int64(opts.LimitBytes)), r}
	}
	return r, nil
}

func modTime(path string) time.Time {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

// The kubelet's limits for a termination message taken from the log (FallbackToLogsOnError).
const (
	terminationMessageLines = 80
	terminationMessageBytes = 2048
)

// logTail returns the last lines of the log at path, at most maxLines lines and maxBytes bytes
// (cut at the front), as the kubelet does for FallbackToLogsOnError; "" when unreadable.
func logTail(path string, maxLines, maxBytes int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	tail := bytes.Join(lines, []byte("\n"))
	if len(tail) > maxBytes {
		tail = tail[len(tail)-maxBytes:]
	}
	return string(tail)
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	pos := end
	for i := 0; i < n && pos > 0; i++ {
		pos = bytes.LastIndexByte(b[:pos], '\n')
		if pos < 0 {
			pos = -1
			break
		}
	}
	_, err = f.Seek(int64(pos+1), io.SeekStart)
	return err
}

// running reports whether the container currently has a process.
func (p *provider) running(namespace, pod, container string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pr, ok := p.pods[podKey(namespace, pod)]; ok {
		for _, cr := range append(append([]*ctrRun{}, pr.inits...), pr.ctrs...) {
			if cr.c.Name == container {
				return cr.pid != 0
			}
		}
	}
	return false
}

// follower reads a growing file until the container stops or the request ends (like the
// kubelet's `kubectl logs -f`).
type follower struct {
	f     *os.File
	ctx   context.Context
	alive func() bool
}

func (r *follower) Read(b []byte) (int, error) {
	for {
		alive := r.alive() // before reading, so output written just before the exit is not lost
		n, err := r.f.Read(b)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		if !alive {
			return 0, io.EOF
		}
		select {
		case <-r.ctx.Done():
			return 0, io.EOF
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (r *follower) Close() error { return r.f.Close() }
