package agent

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// meminfoField maps one /proc/meminfo line, as procfs parses it, to its
// node_exporter name: the kernel's name with "(x)" written "_x", and
// "_bytes" added when the kernel gives the value in kB.
type meminfoField struct {
	name  string
	value func(m *procfs.Meminfo) *uint64
}

// meminfoFields are the /proc/meminfo lines procfs v0.23 parses. The kernel
// has a few more (KReclaimable, FilePmdMapped, Balloon on this kernel);
// node_exporter, which parses the file itself, reports those too, the agent
// does not.
var meminfoFields = []meminfoField{
	{"MemTotal_bytes", func(m *procfs.Meminfo) *uint64 { return m.MemTotalBytes }},
	{"MemFree_bytes", func(m *procfs.Meminfo) *uint64 { return m.MemFreeBytes }},
	{"MemAvailable_bytes", func(m *procfs.Meminfo) *uint64 { return m.MemAvailableBytes }},
	{"Buffers_bytes", func(m *procfs.Meminfo) *uint64 { return m.BuffersBytes }},
	{"Cached_bytes", func(m *procfs.Meminfo) *uint64 { return m.CachedBytes }},
	{"SwapCached_bytes", func(m *procfs.Meminfo) *uint64 { return m.SwapCachedBytes }},
	{"Active_bytes", func(m *procfs.Meminfo) *uint64 { return m.ActiveBytes }},
	{"Inactive_bytes", func(m *procfs.Meminfo) *uint64 { return m.InactiveBytes }},
	{"Active_anon_bytes", func(m *procfs.Meminfo) *uint64 { return m.ActiveAnonBytes }},
	{"Inactive_anon_bytes", func(m *procfs.Meminfo) *uint64 { return m.InactiveAnonBytes }},
	{"Active_file_bytes", func(m *procfs.Meminfo) *uint64 { return m.ActiveFileBytes }},
	{"Inactive_file_bytes", func(m *procfs.Meminfo) *uint64 { return m.InactiveFileBytes }},
	{"Unevictable_bytes", func(m *procfs.Meminfo) *uint64 { return m.UnevictableBytes }},
	{"Mlocked_bytes", func(m *procfs.Meminfo) *uint64 { return m.MlockedBytes }},
	{"SwapTotal_bytes", func(m *procfs.Meminfo) *uint64 { return m.SwapTotalBytes }},
	{"SwapFree_bytes", func(m *procfs.Meminfo) *uint64 { return m.SwapFreeBytes }},
	{"Zswap_bytes", func(m *procfs.Meminfo) *uint64 { return m.ZswapBytes }},
	{"Zswapped_bytes", func(m *procfs.Meminfo) *uint64 { return m.ZswappedBytes }},
	{"Dirty_bytes", func(m *procfs.Meminfo) *uint64 { return m.DirtyBytes }},
	{"Writeback_bytes", func(m *procfs.Meminfo) *uint64 { return m.WritebackBytes }},
	{"AnonPages_bytes", func(m *procfs.Meminfo) *uint64 { return m.AnonPagesBytes }},
	{"Mapped_bytes", func(m *procfs.Meminfo) *uint64 { return m.MappedBytes }},
	{"Shmem_bytes", func(m *procfs.Meminfo) *uint64 { return m.ShmemBytes }},
	{"Slab_bytes", func(m *procfs.Meminfo) *uint64 { return m.SlabBytes }},
	{"SReclaimable_bytes", func(m *procfs.Meminfo) *uint64 { return m.SReclaimableBytes }},
	{"SUnreclaim_bytes", func(m *procfs.Meminfo) *uint64 { return m.SUnreclaimBytes }},
	{"KernelStack_bytes", func(m *procfs.Meminfo) *uint64 { return m.KernelStackBytes }},
	{"PageTables_bytes", func(m *procfs.Meminfo) *uint64 { return m.PageTablesBytes }},
	{"SecPageTables_bytes", func(m *procfs.Meminfo) *uint64 { return m.SecPageTablesBytes }},
	{"NFS_Unstable_bytes", func(m *procfs.Meminfo) *uint64 { return m.NFSUnstableBytes }},
	{"Bounce_bytes", func(m *procfs.Meminfo) *uint64 { return m.BounceBytes }},
	{"WritebackTmp_bytes", func(m *procfs.Meminfo) *uint64 { return m.WritebackTmpBytes }},
	{"CommitLimit_bytes", func(m *procfs.Meminfo) *uint64 { return m.CommitLimitBytes }},
	{"Committed_AS_bytes", func(m *procfs.Meminfo) *uint64 { return m.CommittedASBytes }},
	{"VmallocTotal_bytes", func(m *procfs.Meminfo) *uint64 { return m.VmallocTotalBytes }},
	{"VmallocUsed_bytes", func(m *procfs.Meminfo) *uint64 { return m.VmallocUsedBytes }},
	{"VmallocChunk_bytes", func(m *procfs.Meminfo) *uint64 { return m.VmallocChunkBytes }},
	{"Percpu_bytes", func(m *procfs.Meminfo) *uint64 { return m.PercpuBytes }},
	{"HardwareCorrupted_bytes", func(m *procfs.Meminfo) *uint64 { return m.HardwareCorruptedBytes }},
	{"AnonHugePages_bytes", func(m *procfs.Meminfo) *uint64 { return m.AnonHugePagesBytes }},
	{"FileHugePages_bytes", func(m *procfs.Meminfo) *uint64 { return m.FileHugePagesBytes }},
	{"ShmemHugePages_bytes", func(m *procfs.Meminfo) *uint64 { return m.ShmemHugePagesBytes }},
	{"ShmemPmdMapped_bytes", func(m *procfs.Meminfo) *uint64 { return m.ShmemPmdMappedBytes }},
	{"CmaTotal_bytes", func(m *procfs.Meminfo) *uint64 { return m.CmaTotalBytes }},
	{"CmaFree_bytes", func(m *procfs.Meminfo) *uint64 { return m.CmaFreeBytes }},
	{"Unaccepted_bytes", func(m *procfs.Meminfo) *uint64 { return m.UnacceptedBytes }},
	{"HugePages_Total", func(m *procfs.Meminfo) *uint64 { return m.HugePagesTotal }},
	{"HugePages_Free", func(m *procfs.Meminfo) *uint64 { return m.HugePagesFree }},
	{"HugePages_Rsvd", func(m *procfs.Meminfo) *uint64 { return m.HugePagesRsvd }},
	{"HugePages_Surp", func(m *procfs.Meminfo) *uint64 { return m.HugePagesSurp }},
	{"Hugepagesize_bytes", func(m *procfs.Meminfo) *uint64 { return m.HugepagesizeBytes }},
	{"Hugetlb_bytes", func(m *procfs.Meminfo) *uint64 { return m.HugetlbBytes }},
	{"DirectMap4k_bytes", func(m *procfs.Meminfo) *uint64 { return m.DirectMap4kBytes }},
	{"DirectMap2M_bytes", func(m *procfs.Meminfo) *uint64 { return m.DirectMap2MBytes }},
	{"DirectMap1G_bytes", func(m *procfs.Meminfo) *uint64 { return m.DirectMap1GBytes }},
}

// meminfoCollector reports every /proc/meminfo field procfs knows, as a gauge.
type meminfoCollector struct {
	fs    procfs.FS
	descs []*prometheus.Desc
}

func newMeminfoCollector(e *env) (Collector, error) {
	c := &meminfoCollector{fs: e.proc, descs: make([]*prometheus.Desc, len(meminfoFields))}
	for i, f := range meminfoFields {
		c.descs[i] = prometheus.NewDesc("node_memory_"+f.name, "Memory information field "+f.name+" from /proc/meminfo.", nil, nil)
	}
	return c, nil
}

func (c *meminfoCollector) Update(ch chan<- prometheus.Metric) error {
	m, err := c.fs.Meminfo()
	if err != nil {
		return fmt.Errorf("meminfo: %w", err)
	}
	n := c.emit(ch, &m)
	if n == 0 {
		return errors.New("meminfo: no field procfs knows in meminfo")
	}
	return nil
}

// emit sends the fields present in m (a kernel lacks some) and says how many.
func (c *meminfoCollector) emit(ch chan<- prometheus.Metric, m *procfs.Meminfo) int {
	n := 0
	for i, f := range meminfoFields {
		if v := f.value(m); v != nil {
			ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, float64(*v))
			n++
		}
	}
	return n
}
