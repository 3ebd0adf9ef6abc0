package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla/flotilla/storage"
)

// storageCollector exports the node's store figures (storage.Pebble.Stats)
// as the flotilla_storage_* metrics, read once per scrape: Pebble's
// metrics lock its mutex, once for all six figures.
type storageCollector struct {
	stats func() (storage.Stats, bool)
}

var (
	descWriteStalls = prometheus.NewDesc("flotilla_storage_write_stalls_total",
		"Times the store held writes back (too many memtables waiting for a flush, or too many sublevels in level 0): every write of the node waits, the raft path's too.", nil, nil)
	descWriteStallSeconds = prometheus.NewDesc("flotilla_storage_write_stall_seconds_total",
		"Total length of the store's write stalls, the one under way included.", nil, nil)
	descCompactionPause = prometheus.NewDesc("flotilla_storage_compaction_pause_seconds_total",
		"Time compactions spent paused by the pacing (--compaction-duty), summed over compactions.", nil, nil)
	descCompactions = prometheus.NewDesc("flotilla_storage_compactions_total",
		"Compactions the store ran (failed or cancelled ones too).", nil, nil)
	descL0Tables = prometheus.NewDesc("flotilla_storage_l0_tables",
		"Tables in the store's level 0 now.", nil, nil)
	descL0Sublevels = prometheus.NewDesc("flotilla_storage_l0_sublevels",
		"Sublevels of the store's level 0 now (its read amplification; writes stop at 12).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c storageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWriteStalls, descWriteStallSeconds, descCompactionPause, descCompactions, descL0Tables, descL0Sublevels} {
		ch <- d
	}
}

// Collect implements prometheus.Collector; the scrape's goroutine calls it.
// Once the store is closed it sends nothing (zeros would read as a reset).
func (c storageCollector) Collect(ch chan<- prometheus.Metric) {
	st, ok := c.stats()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(descWriteStalls, prometheus.CounterValue, float64(st.WriteStalls))
	ch <- prometheus.MustNewConstMetric(descWriteStallSeconds, prometheus.CounterValue, st.WriteStallTime.Seconds())
	ch <- prometheus.MustNewConstMetric(descCompactionPause, prometheus.CounterValue, st.CompactionPause.Seconds())
	ch <- prometheus.MustNewConstMetric(descCompactions, prometheus.CounterValue, float64(st.Compactions))
	ch <- prometheus.MustNewConstMetric(descL0Tables, prometheus.GaugeValue, float64(st.L0Tables))
	ch <- prometheus.MustNewConstMetric(descL0Sublevels, prometheus.GaugeValue, float64(st.L0Sublevels))
}
