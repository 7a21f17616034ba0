// Command imagebuild writes an OCI image archive from directory trees, without a container
// daemon, and byte for byte the same every time it is given the same trees and flags.
//
// Each -layer directory becomes one gzip layer (entries in lexical order, owner root unless
// -owner says otherwise, every time set to -created). The archive holds the image twice over
// the same blobs, the way `docker save` (25+) writes it: as an OCI image layout (index.json,
// oci-layout) and as a Docker archive (manifest.json). So `kind load image-archive`,
// `k3d image import`, `docker load`, `ctr import`, `crane push` and `skopeo copy oci-archive:`
// all take it.
//
//	imagebuild -name kartflow/worker -tag 0.1.0 -layer rootfs/ -layer app/ \
//	  -entrypoint /usr/local/bin/kartflow-worker -user 65532:65532 -created 1767225600 \
//	  -label org.opencontainers.image.version=0.1.0 -out target/images/kartflow-worker.tar
//
// It prints one JSON line: the image reference, its manifest digest and sizes.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var spec Spec
	var layers, envs, labels, owners listFlag
	var created, entrypoint string
	flag.StringVar(&spec.Name, "name", "", "repository, e.g. kartflow/worker (required)")
	flag.StringVar(&spec.Tag, "tag", "", "tag, e.g. 0.1.0 (required)")
	flag.Var(&layers, "layer", "directory whose tree becomes a layer, in order (repeatable, at least one)")
	flag.StringVar(&entrypoint, "entrypoint", "", "entrypoint, arguments separated by spaces")
	flag.StringVar(&spec.User, "user", "", "user[:group] the image runs as, e.g. 65532:65532")
	flag.StringVar(&spec.WorkingDir, "workdir", "/", "working directory")
	flag.Var(&envs, "env", "KEY=VALUE in the image's environment (repeatable)")
	flag.Var(&labels, "label", "KEY=VALUE label (repeatable)")
	flag.Var(&owners, "owner", "PATH=UID:GID owner of one entry inside the layers, e.g. home/nonroot=65532:65532 (repeatable; the rest is root's)")
	flag.StringVar(&created, "created", "", "image creation time: Unix seconds (e.g. $SOURCE_DATE_EPOCH) or RFC 3339 (required)")
	out := flag.String("out", "", "archive to write (required)")
	flag.Parse()

	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "imagebuild: "+format+"\n", args...)
		os.Exit(2)
	}
	if spec.Name == "" || spec.Tag == "" || *out == "" || created == "" || len(layers) == 0 {
		fail("-name, -tag, -created, -out and at least one -layer are required (see -help)")
	}
	t, err := parseTime(created)
	if err != nil {
		fail("-created %q: %v", created, err)
	}
	spec.Created = t
	spec.Layers = layers
	if entrypoint != "" {
		spec.Entrypoint = strings.Fields(entrypoint)
	}
	spec.Env = envs
	if spec.Labels, err = keyValues(labels, "-label"); err != nil {
		fail("%v", err)
	}
	if spec.Owners, err = parseOwners(owners); err != nil {
		fail("%v", err)
	}
	sum, err := Build(spec, *out)
	if err != nil {
		fail("%v", err)
	}
	fmt.Println(sum.JSON())
}

func parseTime(v string) (time.Time, error) {
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Unix(secs, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("neither Unix seconds nor RFC 3339 (2006-01-02T15:04:05Z)")
	}
	return t.UTC(), nil
}

func keyValues(items []string, what string) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range items {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want KEY=VALUE", what, kv)
		}
		m[k] = v
	}
	return m, nil
}

func parseOwners(items []string) (map[string][2]int, error) {
	m := map[string][2]int{}
	for _, kv := range items {
		p, ids, ok := strings.Cut(kv, "=")
		u, g, ok2 := strings.Cut(ids, ":")
		uid, err1 := strconv.Atoi(u)
		gid, err2 := strconv.Atoi(g)
		if !ok || !ok2 || err1 != nil || err2 != nil || p == "" {
			return nil, fmt.Errorf("-owner %q: want PATH=UID:GID, e.g. home/nonroot=65532:65532", kv)
		}
		m[strings.Trim(p, "/")] = [2]int{uid, gid}
	}
	return m, nil
}
