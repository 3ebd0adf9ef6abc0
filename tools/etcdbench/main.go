// Command etcdbench is a load generator for etcd that runs the same loop as
// Flotilla's `flotilla bench put` (package loadgen, which both use), so the
// two systems are compared with the same workload shape (BENCHMARKS.md, "KV
// service vs etcd"). It lives in its own module to keep etcd's client out of
// Flotilla's go.mod; it takes loadgen from this checkout (replace ../..).
// -w json prints the same object as `flotilla bench put -w json`
// (loadgen.Report: errors_by_kind names etcd's errors by their gRPC code,
// see errorKind; per_second is the run second by second).
//
// With --cacert it talks TLS to the members (tools/etcd3.sh with
// ETCD3_CERTS_DIR), checking their certificates against that CA, and with
// --cert and --key it presents a client certificate, as etcd's
// --client-cert-auth demands; the flags are named as etcdctl's.
//
// Usage:
//
//	etcdbench --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
//	  --clients 256 --conns 1 --value-size 256 --keys 1000 --duration 15s -w json
//	  [--cacert CERTS/ca.crt --cert CERTS/client-root.crt --key CERTS/client-root.key]
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/internal/loadgen"
	"go.uber.org/zap"
)

type config struct {
	endpoints []string
	// op is put or txn (a two-key compare-and-swap, as `flotilla bench
	// txn` sends).
	op        string
	clients   int
	conns     int
	valueSize int
	keys      int
	duration  time.Duration
	out       string
	// watchers and rate: --op watch (loadgen.RunWatch).
	watchers int
	rate     float64
	// tls is nil for plaintext, else the client's TLS configuration
	// (--cacert, --cert, --key).
	tls *tls.Config
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "etcdbench:", err)
		os.Exit(2)
	}
	res, err := run(context.Background(), cfg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdbench:", err)
		os.Exit(1)
	}
	if cfg.out == "json" {
		if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, "etcdbench:", err)
			os.Exit(1)
		}
		return
	}
	fmt.Println(res)
}

func parseFlags(args []string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("etcdbench", flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	endpoints := fs.String("endpoints", "127.0.0.1:2379", "client addresses of the etcd members, comma separated (HOST:PORT)")
	fs.StringVar(&cfg.op, "op", "put", `put; txn: if key K holds the value, put it in K and K+"/2", else the same; or watch: --watchers watch the prefix "w/" while --clients put under it at --rate (flotilla bench watch)`)
	fs.IntVar(&cfg.watchers, "watchers", 1000, "--op watch: watchers of the prefix (1..100000)")
	fs.Float64Var(&cfg.rate, "rate", 10000, "--op watch: puts per second over all clients (0: as fast as they go)")
	fs.IntVar(&cfg.clients, "clients", 16, "concurrent clients (1..10000)")
	fs.IntVar(&cfg.conns, "conns", 1, "etcd clients (connections) the clients share (1..10000; at most --clients are made)")
	fs.IntVar(&cfg.valueSize, "value-size", 128, "value size in bytes (0..1048576)")
	fs.IntVar(&cfg.keys, "keys", 1000, "number of distinct keys (1..100000000)")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "how long to run")
	fs.StringVar(&cfg.out, "write-out", "table", "output format: table or json")
	fs.StringVar(&cfg.out, "w", "table", "shorthand for --write-out")
	cacert := fs.String("cacert", "", "PEM file of the CA that signed the members' certificates: talk TLS (default: plaintext)")
	cert := fs.String("cert", "", "PEM file of the client certificate to present (with --key; needs --cacert)")
	key := fs.String("key", "", "PEM file of the key of --cert")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			cfg.endpoints = append(cfg.endpoints, e)
		}
	}
	switch {
	case len(cfg.endpoints) == 0:
		return cfg, fmt.Errorf("--endpoints is empty; want HOST:PORT[,HOST:PORT...]")
	case cfg.clients < 1 || cfg.clients > 10000:
		return cfg, fmt.Errorf("--clients %d outside 1..10000", cfg.clients)
	case cfg.conns < 1 || cfg.conns > 10000:
		return cfg, fmt.Errorf("--conns %d outside 1..10000", cfg.conns)
	case cfg.duration <= 0:
		return cfg, fmt.Errorf("--duration must be positive")
	case cfg.valueSize < 0 || cfg.valueSize > 1<<20:
		return cfg, fmt.Errorf("--value-size %d outside 0..1048576", cfg.valueSize)
	case cfg.keys < 1 || cfg.keys > 100000000:
		return cfg, fmt.Errorf("--keys %d outside 1..100000000", cfg.keys)
	case cfg.op != "put" && cfg.op != "txn" && cfg.op != "watch":
		return cfg, fmt.Errorf("--op %q: want put, txn or watch", cfg.op)
	case cfg.op == "watch" && (cfg.watchers < 1 || cfg.watchers > 100000):
		return cfg, fmt.Errorf("--watchers %d outside 1..100000", cfg.watchers)
	case cfg.op == "watch" && cfg.valueSize < 8:
		return cfg, fmt.Errorf("--value-size %d: a watch benchmark's value holds its send time, at least 8 bytes", cfg.valueSize)
	case cfg.rate < 0:
		return cfg, fmt.Errorf("--rate must not be negative")
	case cfg.out != "table" && cfg.out != "json":
		return cfg, fmt.Errorf("-w %q: want one of table, json", cfg.out)
	}
	var err error
	cfg.tls, err = loadTLS(*cacert, *cert, *key)
	return cfg, err
}

// loadTLS returns the TLS configuration of the flags: nil when cacert is
// empty (plaintext), else one that trusts only the CAs in cacert and, when
// cert and key are given, presents that pair. It fails if a file cannot be
// read or parsed, or if the flags are given in an incomplete combination.
func loadTLS(cacert, cert, key string) (*tls.Config, error) {
	switch {
	case cacert == "" && (cert != "" || key != ""):
		return nil, fmt.Errorf("--cert and --key need --cacert")
	case (cert == "") != (key == ""):
		return nil, fmt.Errorf("--cert and --key go together")
	case cacert == "":
		return nil, nil
	}
	pem, err := os.ReadFile(cacert)
	if err != nil {
		return nil, fmt.Errorf("--cacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--cacert %s: no PEM certificate in it", cacert)
	}
	c := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// run puts (or runs transactions) for cfg.duration and returns the figures, writing a progress line
// to progress once a second.
func run(ctx context.Context, cfg config, progress io.Writer) (loadgen.Report, error) {
	// A few etcd clients share the load; each has its own connection(s) and
	// balances over all the endpoints.
	n := min(cfg.clients, cfg.conns)
	if cfg.op == "watch" {
		n = max(cfg.conns, len(cfg.endpoints)) // a client per member at least: the watchers spread
	}
	clients := make([]*clientv3.Client, 0, n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range n {
		eps := cfg.endpoints
		if cfg.op == "watch" {
			// Client i talks to member i only: its watch stream goes there.
			eps = []string{cfg.endpoints[len(clients)%len(cfg.endpoints)]}
		}
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   eps,
			DialTimeout: 5 * time.Second,
			Context:     ctx,
			Logger:      zap.NewNop(),
			TLS:         cfg.tls,
		})
		if err != nil {
			return loadgen.Report{}, fmt.Errorf("connecting to %s: %w", strings.Join(cfg.endpoints, ","), err)
		}
		clients = append(clients, c)
	}
	if cfg.op == "watch" {
		return runWatch(ctx, cfg, clients, progress)
	}
	b := make([]byte, cfg.valueSize)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	value := string(b)
	o := loadgen.Options{Clients: cfg.clients, Duration: cfg.duration, Label: "bench " + cfg.op, Progress: progress, Classify: errorKind}
	r := loadgen.Run(ctx, o, func(ctx context.Context, i int, rng *rand.Rand) error {
		c := clients[i%len(clients)]
		key := string(loadgen.AppendKey(nil, rng.IntN(cfg.keys)))
		if cfg.op == "txn" {
			puts := []clientv3.Op{clientv3.OpPut(key, value), clientv3.OpPut(key+"/2", value)}
			_, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", value)).Then(puts...).Else(puts...).Commit()
			return err
		}
		_, err := c.Put(ctx, key, value)
		return err
	})
	return loadgen.Report{Op: cfg.op, Result: r, Clients: cfg.clients, ValueSize: cfg.valueSize, Keys: cfg.keys}, nil
}

// errorKind names the kind of a failed put's error in the report's
// errors_by_kind, as `flotilla bench` does where the two systems' errors
// mean the same: the context's end is "timeout" or "canceled", and an etcd
// server error (rpctypes.EtcdError: "etcdserver: no leader", "request
// timed out", ...) or a gRPC status is its code in snake_case
// ("unavailable", "resource_exhausted"; a DeadlineExceeded or Canceled
// code is "timeout" or "canceled"). Anything else is "other".
func errorKind(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	var code codes.Code
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	} else {
		return "other"
	}
	switch code {
	case codes.DeadlineExceeded:
		return "timeout"
	case codes.Canceled:
		return "canceled"
	}
	return loadgen.SnakeCase(code.String())
}

// runWatch is the watch benchmark (loadgen.RunWatch) against etcd: watcher
// i watches the prefix through clients[i%len(clients)] (etcd multiplexes
// a client's watchers on one stream), live once etcd confirmed it
// (WithCreatedNotify).
func runWatch(ctx context.Context, cfg config, clients []*clientv3.Client, progress io.Writer) (loadgen.Report, error) {
	o := loadgen.WatchOptions{Watchers: cfg.watchers, Clients: cfg.clients, Rate: cfg.rate, Duration: cfg.duration,
		Keys: cfg.keys, ValueSize: cfg.valueSize, Label: "bench watch", Progress: progress, Classify: errorKind}
	start := func(ctx context.Context, i int, observe func([]byte)) error {
		ch := clients[i%len(clients)].Watch(ctx, loadgen.WatchPrefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		first, ok := <-ch
		if !ok {
			return fmt.Errorf("watch closed before it was created")
		}
		if err := first.Err(); err != nil {
			return err
		}
		go func() { // one per watcher, until ctx ends
			for r := range ch {
				for _, e := range r.Events {
					observe(e.Kv.Value)
				}
			}
		}()
		return nil
	}
	put := func(ctx context.Context, i int, key, value []byte) error {
		_, err := clients[i%len(clients)].Put(ctx, string(key), string(value))
		return err
	}
	rep, _, err := loadgen.RunWatch(ctx, o, start, put)
	return rep, err
}
