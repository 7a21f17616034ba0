package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeLoop runs the container's startup probe, then its readiness and liveness probes, for one
// process (pid); it ends with ctx (process exit or pod stop).
func (p *provider) probeLoop(ctx context.Context, pr *podRun, cr *ctrRun, pid int) {
	c := cr.c
	if c.StartupProbe != nil {
		if !p.probeUntil(ctx, pr, cr, c.StartupProbe, nil) {
			if ctx.Err() == nil {
				p.killContainer(pr, cr, "startup probe failed")
			}
			return
		}
		p.mu.Lock()
		cr.started = true
		p.mu.Unlock()
		p.notifyPod(pr)
	}
	if c.ReadinessProbe != nil {
		go p.probeUntil(ctx, pr, cr, c.ReadinessProbe, func(ok bool) {
			p.mu.Lock()
			changed := cr.ready != ok && cr.pid == pid
			if changed {
				cr.ready = ok
			}
			p.mu.Unlock()
			if changed {
				p.notifyPod(pr)
			}
		})
	}
	if c.LivenessProbe != nil {
		if !p.probeUntil(ctx, pr, cr, c.LivenessProbe, nil) && ctx.Err() == nil {
			p.killContainer(pr, cr, "liveness probe failed")
		}
	}
}

// probeUntil probes periodically. With report == nil it returns true at the first success
// (startup) or false when failureThreshold is reached (liveness uses that: success never ends
// it, see below). With report it reports every threshold crossing until ctx ends.
func (p *provider) probeUntil(ctx context.Context, pr *podRun, cr *ctrRun, pb *corev1.Probe, report func(bool)) bool {
	period := time.Duration(max(pb.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(pb.TimeoutSeconds, 1)) * time.Second
	failThreshold := int(max(pb.FailureThreshold, 1))
	successThreshold := int(max(pb.SuccessThreshold, 1))
	isStartup := pb == cr.c.StartupProbe
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Duration(pb.InitialDelaySeconds) * time.Second):
	}
	fails, oks := 0, 0
	for {
		err := p.probeOnce(ctx, pr, cr, pb, timeout)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			oks, fails = oks+1, 0
			if oks >= successThreshold {
				if report != nil {
					report(true)
				} else if isStartup {
					return true
				}
			}
		} else {
			oks, fails = 0, fails+1
			p.events.Eventf(pr.pod, corev1.EventTypeWarning, "Unhealthy", "%s probe of container %s failed: %v", probeKind(cr, pb), cr.c.Name, err)
			if fails >= failThreshold {
				if report != nil {
					report(false)
				} else {
					return false
				}
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(period):
		}
	}
}

func (p *provider) probeOnce(ctx context.Context, pr *podRun, cr *ctrRun, pb *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case pb.HTTPGet != nil:
		h := pb.HTTPGet
		host := h.Host
		if host == "" {
			host = pr.ip
		}
		port, err := resolvePort(h.Port, &cr.c)
		if err != nil {
			return err
		}
		scheme := "http"
		if h.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: h.Path}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		for _, hd := range h.HTTPHeaders {
			req.Header.Add(hd.Name, hd.Value)
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe returned %d", resp.StatusCode)
		}
		return nil
	case pb.TCPSocket != nil:
		host := pb.TCPSocket.Host
		if host == "" {
			host = pr.ip
		}
		port, err := resolvePort(pb.TCPSocket.Port, &cr.c)
		if err != nil {
			return err
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case pb.Exec != nil:
		p.mu.Lock()
		spec := cr.spec
		p.mu.Unlock()
		cmd, err := p.shimCmd(pr, cr.c.Name+".probe", spec, pb.Exec.Command)
		if err != nil {
			return err
		}
		if err := startPinned(cmd); err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			return fmt.Errorf("exec probe timed out")
		}
	}
	return fmt.Errorf("unsupported probe type (grpc is not implemented on the process node)")
}

func resolvePort(port intstr.IntOrString, c *corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port.StrVal)
}

func probeKind(cr *ctrRun, pb *corev1.Probe) string {
	switch pb {
	case cr.c.StartupProbe:
		return "Startup"
	case cr.c.LivenessProbe:
		return "Liveness"
	}
	return "Readiness"
}
