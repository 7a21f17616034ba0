// testhttp is the tiny HTTP program behind the test image kartflow/testhttp:* of the process
// node. It listens on $POD_IP:$PORT (default 8080) and serves:
//
//	/         "<pod name> <pod ip>\n"
//	/healthz  liveness: 200, or 500 while the file $FAIL_LIVENESS_FILE exists or FAIL_LIVENESS=1
//	/readyz   readiness: 200, or 503 while $FAIL_READINESS_FILE exists or FAIL_READINESS=1
//	/env?name=X  the value of environment variable X
//	/file?path=P the content of file P (to check mounted volumes)
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func failing(flagEnv, fileEnv string) bool {
	if os.Getenv(flagEnv) == "1" {
		return true
	}
	if f := os.Getenv(fileEnv); f != "" {
		if _, err := os.Stat(f); err == nil {
			return true
		}
	}
	return false
}

func main() {
	ip, port := os.Getenv("POD_IP"), os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	name := os.Getenv("POD_NAME")
	if name == "" {
		name = os.Getenv("HOSTNAME") // the node agent sets it to the pod name, like the kubelet
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s\n", name, ip)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if failing("FAIL_LIVENESS", "FAIL_LIVENESS_FILE") {
			http.Error(w, "liveness failure requested", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if failing("FAIL_READINESS", "FAIL_READINESS_FILE") {
			http.Error(w, "readiness failure requested", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, os.Getenv(r.URL.Query().Get("name")))
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	addr := net.JoinHostPort(ip, port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("listen %s: %v", addr, err)
	}
	log.Printf("testhttp %s listening on %s", name, addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		log.Printf("got %v, exiting", s)
		os.Exit(0)
	}()
	log.Fatal(http.Serve(ln, mux))
}
