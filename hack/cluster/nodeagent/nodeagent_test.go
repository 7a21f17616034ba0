package main

import (
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "1", "IP": "10.244.0.2"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	for in, want := range map[string]string{
		"plain":           "plain",
		"$(IP):8080":      "10.244.0.2:8080",
		"$(MISSING)-$(A)": "$(MISSING)-1",
		"$$(A)":           "$(A)",
		"cost $5":         "cost $5",
		"$(A":             "$(A",
		"end$":            "end$",
	} {
		if got := expand(in, lookup); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestImageLookup(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kartflow-worker")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := &imageMap{Images: []imageEntry{
		{Name: "kartflow/worker", Binary: bin},
		{Name: "kartflow/operator", Binary: filepath.Join(dir, "missing")},
		{Name: "busybox", Host: true},
	}}
	for image, ok := range map[string]bool{
		"kartflow/worker":                        true,
		"kartflow/worker:dev":                    true,
		"ghcr.io/kartflow/worker:0.1@sha256:abc": true,
		"localhost:5000/kartflow/worker":         true,
		"busybox:1.36":                           true,
		"evilkartflow/worker:1":                  false,
		"kartflow/operator:1":                    false, // binary not built
		"nginx":                                  false,
	} {
		if _, err := m.lookup(image); (err == nil) != ok {
			t.Errorf("lookup(%q): err = %v, want ok = %v", image, err, ok)
		}
	}
}

func TestBlankEnvCopies(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{
		Env: []corev1.EnvVar{{Name: "IP", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
		EnvFrom: []corev1.EnvFromSource{{Prefix: "X"}},
	}}}}
	got := blankEnv(pod)
	if got == pod || got.Spec.Containers[0].Env[0].ValueFrom != nil || got.Spec.Containers[0].EnvFrom != nil {
		t.Fatalf("blankEnv did not blank a copy: %+v", got.Spec.Containers[0])
	}
	if pod.Spec.Containers[0].Env[0].ValueFrom == nil {
		t.Fatal("blankEnv modified the informer's pod")
	}
}

func TestResourceValue(t *testing.T) {
	c := &corev1.Container{Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("64Mi")}}}
	for _, tc := range []struct {
		sel  corev1.ResourceFieldSelector
		want string
	}{
		{corev1.ResourceFieldSelector{Resource: "limits.cpu"}, "2"},
		{corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1m")}, "1500"},
		{corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}, "64"},
		{corev1.ResourceFieldSelector{Resource: "requests.memory"}, "0"},
	} {
		if got := resourceValue(c, &tc.sel); got != tc.want {
			t.Errorf("resourceValue(%s) = %s, want %s", tc.sel.Resource, got, tc.want)
		}
	}
}

func TestMountsCoveringSourcesComeLast(t *testing.T) {
	ms := []shimMount{
		{Src: "/state/pods/p/volumes/tmp", Dst: "/tmp"},
		{Src: "/tmp/kartflow-dev/pods/p/volumes/token", Dst: "/var/run/secrets/token"},
		{Src: "/tmp/kartflow-dev/pods/p/volumes/config", Dst: "/etc/config"},
	}
	orderMounts(ms)
	if ms[2].Dst != "/tmp" {
		t.Fatalf("the /tmp mount hides the other sources and must be last: %+v", ms)
	}
	if ms[0].Dst != "/var/run/secrets/token" || ms[1].Dst != "/etc/config" {
		t.Fatalf("the others keep their order: %+v", ms)
	}
}

func TestLogTailForTerminationMessages(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.log")
	if err := os.WriteFile(path, []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		lines, bytes int
		want         string
	}{
		{80, 2048, "one\ntwo\nthree"},
		{2, 2048, "two\nthree"},
		{80, 5, "three"},
		{80, 3, "ree"},
	}
	for _, c := range cases {
		if got := logTail(path, c.lines, c.bytes); got != c.want {
			t.Errorf("logTail(%d lines, %d bytes) = %q, want %q", c.lines, c.bytes, got, c.want)
		}
	}
	if got := logTail(filepath.Join(dir, "missing"), 80, 2048); got != "" {
		t.Errorf("a missing log gives %q", got)
	}
	// A container that exits before writing anything: an empty log, no panic.
	for _, content := range []string{"", "\n", "\n\n"} {
		empty := filepath.Join(dir, "empty.log")
		if err := os.WriteFile(empty, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := logTail(empty, 80, 2048); got != "" {
			t.Errorf("log %q gives %q", content, got)
		}
	}
	if got := logTail(path, 0, 2048); got != "" {
		t.Errorf("no lines asked gives %q", got)
	}
}
