package bench

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram is a lock-free latency histogram with about 1.6% precision:
// 64 linear sub-buckets per power of two of nanoseconds, up to 2^40 ns
// (18 minutes). Recording is one atomic add, so every message can be
// recorded at full rate from any goroutine.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	n      atomic.Uint64
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	histMaxExp  = 40
	histBuckets = (histMaxExp - histSubBits + 2) * histSub
)

// histIndex is the bucket of d: values under 64ns have a bucket each;
// above, the bucket is the power of two and the next six bits.
func histIndex(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < histSub {
		return int(v)
	}
	exp := bits.Len64(v) - 1 // >= histSubBits
	if exp > histMaxExp {
		return histBuckets - 1
	}
	shift := exp - histSubBits
	return (shift+1)*histSub + int((v>>shift)&(histSub-1))
}

// histValue is the upper bound of bucket i.
func histValue(i int) time.Duration {
	if i < histSub {
		return time.Duration(i)
	}
	shift := i/histSub - 1
	mant := uint64(i%histSub) | histSub
	return time.Duration((mant+1)<<shift - 1)
}

func (h *histogram) record(d time.Duration) {
	h.counts[histIndex(d)].Add(1)
	h.n.Add(1)
}

// count returns how many values were recorded.
func (h *histogram) count() uint64 { return h.n.Load() }

// quantile returns the smallest bucket bound under which a fraction q of
// the values fall; 0 when nothing was recorded.
func (h *histogram) quantile(q float64) time.Duration {
	var counts [histBuckets]uint64
	var total uint64
	for i := range counts {
		counts[i] = h.counts[i].Load()
		total += counts[i]
	}
	if total == 0 {
		return 0
	}
	rank := uint64(q * float64(total))
	if rank >= total {
		rank = total - 1
	}
	var seen uint64
	for i, c := range counts {
		seen += c
		if seen > rank {
			return histValue(i)
		}
	}
	return histValue(histBuckets - 1)
}

// shareOver returns the share of the values recorded that lie above d,
// counting those of the bucket that holds d (within the histogram's 1.6 %)
// as not above; 0 when nothing was recorded. Unlike a p99, which a few
// stalls of the machine move, it says how much of a phase was slow.
func (h *histogram) shareOver(d time.Duration) float64 {
	var total, over uint64
	from := histIndex(d) + 1
	for i := range h.counts {
		c := h.counts[i].Load()
		total += c
		if i >= from {
			over += c
		}
	}
	if total == 0 {
		return 0
	}
	return float64(over) / float64(total)
}

// quantiles returns p50, p99 and p999.
func (h *histogram) quantiles() (p50, p99, p999 time.Duration) {
	return h.quantile(0.50), h.quantile(0.99), h.quantile(0.999)
}

// bucketCount is the count of one histogram bucket, for a worker process to
// report its latencies.
type bucketCount struct {
	Index int    `json:"i"`
	Count uint64 `json:"n"`
}

// buckets returns the buckets that are not empty.
func (h *histogram) buckets() []bucketCount {
	var out []bucketCount
	for i := range h.counts {
		if n := h.counts[i].Load(); n > 0 {
			out = append(out, bucketCount{i, n})
		}
	}
	return out
}

// add adds the counts of buckets to h; an index out of range counts in the
// nearest bucket.
func (h *histogram) add(buckets []bucketCount) {
	for _, b := range buckets {
		h.counts[min(max(b.Index, 0), histBuckets-1)].Add(b.Count)
		h.n.Add(b.Count)
	}
}
