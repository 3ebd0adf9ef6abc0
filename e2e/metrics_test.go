package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// httpsGet fetches path from addr: over TLS with cfg, or plain HTTP when
// cfg is nil.
func httpsGet(cfg *tls.Config, addr, path string) (int, []byte, error) {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	scheme := "https://"
	if cfg == nil {
		scheme = "http://"
	}
	resp, err := hc.Get(scheme + addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// metricSum returns the sum of a node's samples of the metric name whose
// labels contain label ("" for all), from its /metrics (TLS with cfg, or
// plain when cfg is nil).
func metricSum(cfg *tls.Config, httpAddr, name, label string) (float64, error) {
	code, body, err := httpsGet(cfg, httpAddr, "/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %d", code)
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") || !strings.Contains(line, label) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics: %q: %v", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}
