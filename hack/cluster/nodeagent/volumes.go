package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// prepareVolumes materialises the pod's volumes under DIR/volumes/<name> and returns name -> host
// directory. It runs again periodically (refreshLoop) so ConfigMap/Secret changes propagate like
// with the kubelet; tokens are only re-requested when withTokens is set.
func (p *provider) prepareVolumes(ctx context.Context, pod *corev1.Pod, dir string, withTokens bool) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		if err := ctx.Err(); err != nil { // pod stopping: do not recreate files being removed
			return nil, err
		}
		vdir := filepath.Join(dir, "volumes", v.Name)
		if v.HostPath != nil {
			out[v.Name] = v.HostPath.Path
			continue
		}
		if err := os.MkdirAll(vdir, 0o755); err != nil {
			return nil, err
		}
		out[v.Name] = vdir
		var err error
		switch {
		case v.EmptyDir != nil:
		case v.ConfigMap != nil:
			err = p.writeConfigMap(ctx, pod, vdir, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
		case v.Secret != nil:
			err = p.writeSecret(ctx, pod, vdir, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
		case v.DownwardAPI != nil:
			err = p.writeDownward(pod, vdir, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				switch {
				case src.ServiceAccountToken != nil:
					t := src.ServiceAccountToken
					if !withTokens {
						continue
					}
					err = p.writeToken(ctx, pod, filepath.Join(vdir, t.Path), t.Audience, t.ExpirationSeconds)
				case src.ConfigMap != nil:
					err = p.writeConfigMap(ctx, pod, vdir, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, v.Projected.DefaultMode)
				case src.Secret != nil:
					err = p.writeSecret(ctx, pod, vdir, src.Secret.Name, src.Secret.Items, src.Secret.Optional, v.Projected.DefaultMode)
				case src.DownwardAPI != nil:
					err = p.writeDownward(pod, vdir, src.DownwardAPI.Items, v.Projected.DefaultMode)
				default:
					err = fmt.Errorf("unsupported projected source in volume %s", v.Name)
				}
				if err != nil {
					break
				}
			}
		default:
			err = fmt.Errorf("volume %s: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes are supported on the process node", v.Name)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m)
	}
	return def
}

// writeItems writes data (all keys, or just items, to their paths) into dir.
func writeItems(dir string, data map[string][]byte, items []corev1.KeyToPath, defMode *int32, what string) error {
	if len(items) == 0 {
		for k := range data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("%s has no key %s", what, it.Key)
		}
		if err := writeFile(dir, it.Path, v, mode(it.Mode, mode(defMode, 0o644))); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(dir, rel string, data []byte, m os.FileMode) error {
	if strings.Contains(rel, "..") || filepath.IsAbs(rel) {
		return fmt.Errorf("invalid volume file path %q", rel)
	}
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Write-then-rename so a refreshed token is never seen half-written.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, m); err != nil {
		return err
	}
	if err := os.Chmod(tmp, m); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (p *provider) writeConfigMap(ctx context.Context, pod *corev1.Pod, dir, name string, items []corev1.KeyToPath, optional *bool, defMode *int32) error {
	cm, err := p.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return ignoreIf(optional != nil && *optional, fmt.Errorf("configmap %s: %w", name, err))
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return writeItems(dir, data, items, defMode, "configmap "+name)
}

func (p *provider) writeSecret(ctx context.Context, pod *corev1.Pod, dir, name string, items []corev1.KeyToPath, optional *bool, defMode *int32) error {
	s, err := p.client.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return ignoreIf(optional != nil && *optional, fmt.Errorf("secret %s: %w", name, err))
	}
	return writeItems(dir, s.Data, items, defMode, "secret "+name)
}

func (p *provider) writeDownward(pod *corev1.Pod, dir string, items []corev1.DownwardAPIVolumeFile, defMode *int32) error {
	for _, it := range items {
		var v string
		switch {
		case it.FieldRef != nil:
			var err error
			if v, err = p.fieldValue(pod, it.FieldRef.FieldPath, ""); err != nil {
				return err
			}
		case it.ResourceFieldRef != nil:
			for i := range pod.Spec.Containers {
				if pod.Spec.Containers[i].Name == it.ResourceFieldRef.ContainerName {
					v = resourceValue(&pod.Spec.Containers[i], it.ResourceFieldRef)
				}
			}
		}
		if err := writeFile(dir, it.Path, []byte(v), mode(it.Mode, mode(defMode, 0o644))); err != nil {
			return err
		}
	}
	return nil
}

// writeToken writes a TokenRequest token for the pod's service account, bound to the pod (so it
// dies with it), to path.
func (p *provider) writeToken(ctx context.Context, pod *corev1.Pod, path, audience string, expSeconds *int64) error {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: expSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if audience != "" {
		tr.Spec.Audiences = []string{audience}
	}
	res, err := p.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, tr, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	return writeFile(filepath.Dir(path), filepath.Base(path), []byte(res.Status.Token), 0o600)
}

// writeServiceAccount writes DIR/serviceaccount/{token,ca.crt,namespace} and DIR/kubeconfig that
// uses them, so the pod's programs act as its service account (KUBECONFIG points there) even
// without the projected volume.
func (p *provider) writeServiceAccount(ctx context.Context, pod *corev1.Pod, dir string) (string, error) {
	sadir := filepath.Join(dir, "serviceaccount")
	exp := int64(3600)
	if err := p.writeToken(ctx, pod, filepath.Join(sadir, "token"), "", &exp); err != nil {
		return "", err
	}
	ca, err := os.ReadFile(p.cfg.caCert)
	if err != nil {
		return "", err
	}
	if err := writeFile(sadir, "ca.crt", ca, 0o644); err != nil {
		return "", err
	}
	if err := writeFile(sadir, "namespace", []byte(pod.Namespace), 0o644); err != nil {
		return "", err
	}
	token, err := os.ReadFile(filepath.Join(sadir, "token"))
	if err != nil {
		return "", err
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	// Both token and tokenFile: clients that re-read tokenFile (client-go, kube-rs) follow the
	// refreshes, others still have a valid token for the first hour.
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kartflow-dev
  cluster:
    server: https://%s:%s
    certificate-authority-data: %s
users:
- name: %s
  user:
    token: %s
    tokenFile: %s
contexts:
- name: kartflow-dev
  context: {cluster: kartflow-dev, user: %s, namespace: %s}
current-context: kartflow-dev
`, p.cfg.apiHost, p.cfg.apiPort, base64.StdEncoding.EncodeToString(ca), sa, token,
		filepath.Join(sadir, "token"), sa, pod.Namespace)
	if err := writeFile(dir, "kubeconfig", []byte(kc), 0o600); err != nil {
		return "", err
	}
	return filepath.Join(dir, "kubeconfig"), nil
}
