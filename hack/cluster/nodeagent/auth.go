package main

// Authentication and authorization of the kubelet API, like a kubelet with
// --authentication-token-webhook and --authorization-mode=Webhook: a client certificate signed by
// the cluster CA (the apiserver's kubelet client) is trusted as before; a bearer token (how
// metrics-server, in a pod, authenticates with its service account) is checked with a TokenReview
// and the request with a SubjectAccessReview on nodes/<subresource>.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// kubeletAttributes maps a kubelet API request to the verb and node subresource the kubelet
// authorizes it as (kubelet server/auth.go: /metrics* and /stats*, everything else is proxy).
func kubeletAttributes(method, path string) (verb, subresource string) {
	switch method {
	case http.MethodGet, http.MethodHead:
		verb = "get"
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
	default:
		verb = strings.ToLower(method)
	}
	switch {
	case path == "/metrics" || strings.HasPrefix(path, "/metrics/"):
		subresource = "metrics"
	case path == "/stats" || strings.HasPrefix(path, "/stats/"):
		subresource = "stats"
	default:
		subresource = "proxy"
	}
	return verb, subresource
}

// withAuth wraps the kubelet API handler.
func withAuth(client kubernetes.Interface, nodeName string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			next.ServeHTTP(w, r)
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			http.Error(w, "Unauthorized: present a client certificate signed by the cluster CA or a bearer token", http.StatusUnauthorized)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		verb, sub := kubeletAttributes(r.Method, r.URL.Path)
		allowed, who, err := reviewToken(ctx, client, token, nodeName, verb, sub)
		switch {
		case err != nil:
			klog.Warningf("kubelet API: authorizing %s %s: %v", r.Method, r.URL.Path, err)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
		case !allowed:
			http.Error(w, fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource=%s)", who, verb, sub), http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// reviewToken authenticates token (TokenReview) and asks the apiserver whether its user may
// <verb> nodes/<subresource> on this node (SubjectAccessReview).
func reviewToken(ctx context.Context, client kubernetes.Interface, token, nodeName, verb, sub string) (bool, string, error) {
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return false, "", fmt.Errorf("TokenReview: %w", err)
	}
	if !tr.Status.Authenticated {
		return false, "", fmt.Errorf("token not authenticated: %s", tr.Status.Error)
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Verb: verb, Resource: "nodes", Subresource: sub, Name: nodeName},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, u.Username, fmt.Errorf("SubjectAccessReview: %w", err)
	}
	return sar.Status.Allowed, u.Username, nil
}
