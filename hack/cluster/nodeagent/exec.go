package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"
)

// runInContainer serves `kubectl exec` (also -it): the command runs in the container's mount
// namespace (nsenter) with the container's environment and working directory.
func (p *provider) runInContainer(ctx context.Context, namespace, pod, container string, cmd []string, attach api.AttachIO) error {
	if len(cmd) == 0 {
		return fmt.Errorf("no command")
	}
	p.mu.Lock()
	pr, ok := p.pods[podKey(namespace, pod)]
	var pid int
	var spec *shimSpec
	if ok {
		for _, cr := range append(append([]*ctrRun{}, pr.inits...), pr.ctrs...) {
			if cr.c.Name == container {
				pid, spec = cr.pid, cr.spec
			}
		}
	}
	p.mu.Unlock()
	if pid == 0 || spec == nil {
		return fmt.Errorf("container %s of pod %s/%s is not running", container, namespace, pod)
	}
	args := append([]string{"-t", strconv.Itoa(pid), "-m", "--wd=" + spec.Dir, "--"}, cmd...)
	c := exec.CommandContext(ctx, "nsenter", args...)
	c.Env = spec.Env
	if attach.TTY() {
		return execTTY(c, attach)
	}
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if r := attach.Stdin(); r != nil {
		c.Stdin = r
	}
	if w := attach.Stdout(); w != nil {
		c.Stdout = w
		defer w.Close()
	}
	if w := attach.Stderr(); w != nil {
		c.Stderr = w
		defer w.Close()
	}
	err := startPinned(c)
	if err == nil {
		err = c.Wait()
	}
	return exitError(err)
}

// exitError wraps an exit status so virtual-kubelet reports the code to kubectl (it expects
// k8s.io/utils/exec's ExitError).
func exitError(err error) error {
	if ee, ok := err.(*exec.ExitError); ok {
		return utilexec.CodeExitError{Err: ee, Code: ee.ExitCode()}
	}
	return err
}

// execTTY runs c on a new pseudo-terminal (its own session, so Ctrl-C reaches it) and follows
// the client's window size.
func execTTY(c *exec.Cmd, attach api.AttachIO) error {
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var tty *os.File
	var err error
	done := make(chan struct{})
	starter <- func() { tty, err = pty.Start(c); close(done) } // pinned thread: see startPinned
	<-done
	if err != nil {
		return err
	}
	defer tty.Close()
	go func() {
		for size := range attach.Resize() {
			_ = pty.Setsize(tty, &pty.Winsize{Rows: size.Height, Cols: size.Width})
		}
	}()
	if r := attach.Stdin(); r != nil {
		go func() { _, _ = io.Copy(tty, r) }()
	}
	copied := make(chan struct{})
	if w := attach.Stdout(); w != nil {
		defer w.Close()
		go func() { _, _ = io.Copy(w, tty); close(copied) }()
	} else {
		close(copied)
	}
	err = c.Wait()
	select { // the last output is still in the terminal's buffer
	case <-copied:
	case <-time.After(time.Second):
	}
	return exitError(err)
}

// portForward serves `kubectl port-forward`: the pod's address is local, so it is a plain copy.
func (p *provider) portForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	p.mu.Lock()
	pr, ok := p.pods[podKey(namespace, pod)]
	ip := ""
	if ok {
		ip = pr.ip
	}
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("pod %s/%s is not running on this node", namespace, pod)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
