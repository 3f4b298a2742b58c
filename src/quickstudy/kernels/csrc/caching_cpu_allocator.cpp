// A size-class caching CPU allocator for PyTorch, installed with c10::SetCPUAllocator.
//
// Why: a meta-training step allocates and frees the same few dozen large tensors (activations and
// their gradients, 1-16 MB each) thousands of times. glibc's malloc either returns them to the
// kernel on free (every reuse then faults its pages in again: ~2.5 us per 4 KiB page in these VMs)
// or, once its dynamic mmap threshold has risen, keeps them in per-thread arenas where they
// fragment (hundreds of MiB of resident but unusable memory with two worker threads). Keeping
// freed blocks in per-size free lists gives both: no page faults after the first step, and a
// resident set close to the live peak.
//
// Blocks of at least kCachedMin bytes are mmap'd directly, rounded up to one of 8 size classes
// per power of two (<= 12.5% rounding), and on free go to their class's free list. A request is
// served by the smallest cached block whose size is at most max_reuse_ratio times its own class,
// else by a fresh mapping. Cached bytes are capped: beyond the cap a freed block is unmapped.
// Smaller requests go to malloc, which handles them well. Everything is guarded by one mutex
// (also taken around fork, so a forked child never inherits it locked).
//
// The library is loaded with ctypes by quickstudy/cpu_allocator.py; the C functions below are its
// whole interface.

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kCachedMin = size_t(1) << 16;  // 64 KiB; every class size is then a page multiple
constexpr size_t kAlignment = 64;                // what c10's default CPU allocator guarantees

size_t size_class(size_t nbytes) {
  size_t power = kCachedMin;
  while (power * 2 <= nbytes) power *= 2;
  const size_t step = power / 8;
  return (nbytes + step - 1) / step * step;
}

struct Stats {
  uint64_t live_bytes = 0, peak_live_bytes = 0, cached_bytes = 0, peak_reserved_bytes = 0;
  uint64_t hits = 0, misses = 0, unmapped = 0;
};

class CachingCPUAllocator final : public c10::Allocator {
 public:
  CachingCPUAllocator(size_t max_cached_bytes, double max_reuse_ratio)
      : max_cached_bytes_(max_cached_bytes), max_reuse_ratio_(max_reuse_ratio) {}

  c10::DataPtr allocate(size_t nbytes) override {
    void* ptr = nullptr;
    if (nbytes == 0) {
      // c10's default allocator also hands out null for zero bytes.
    } else if (nbytes < kCachedMin) {
      ptr = std::aligned_alloc(kAlignment, (nbytes + kAlignment - 1) / kAlignment * kAlignment);
      if (ptr == nullptr) throw std::bad_alloc();
    } else {
      ptr = allocate_cached(size_class(nbytes));
    }
    return {ptr, ptr, &CachingCPUAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CachingCPUAllocator::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void release(void* ptr);

  void free_block(void* ptr) {
    if (ptr == nullptr) return;
    std::unique_lock<std::mutex> lock(mutex_);
    auto found = block_size_.find(ptr);
    if (found == block_size_.end()) {
      lock.unlock();
      std::free(ptr);  // a small block from aligned_alloc
      return;
    }
    const size_t size = found->second;
    stats_.live_bytes -= size;
    if (stats_.cached_bytes + size > max_cached_bytes_) {
      block_size_.erase(found);
      stats_.unmapped++;
      lock.unlock();
      munmap(ptr, size);
      return;
    }
    free_blocks_[size].push_back(ptr);
    stats_.cached_bytes += size;
  }

  size_t empty_cache() {
    std::vector<std::pair<void*, size_t>> to_unmap;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [size, blocks] : free_blocks_)
        for (void* ptr : blocks) {
          to_unmap.emplace_back(ptr, size);
          block_size_.erase(ptr);
        }
      free_blocks_.clear();
      stats_.cached_bytes = 0;
      stats_.unmapped += to_unmap.size();
    }
    size_t released = 0;
    for (auto& [ptr, size] : to_unmap) {
      munmap(ptr, size);
      released += size;
    }
    return released;
  }

  void set_limits(size_t max_cached_bytes, double max_reuse_ratio) {
    std::lock_guard<std::mutex> lock(mutex_);
    max_cached_bytes_ = max_cached_bytes;
    max_reuse_ratio_ = max_reuse_ratio;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void reset_peaks() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_live_bytes = stats_.live_bytes;
    stats_.peak_reserved_bytes = stats_.live_bytes + stats_.cached_bytes;
  }

  std::mutex& mutex() { return mutex_; }

 private:
  void* allocate_cached(size_t wanted) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const double largest = double(wanted) * max_reuse_ratio_;
      for (auto it = free_blocks_.lower_bound(wanted);
           it != free_blocks_.end() && double(it->first) <= largest; ++it) {
        if (it->second.empty()) continue;
        void* ptr = it->second.back();
        const size_t size = it->first;
        it->second.pop_back();
        if (it->second.empty()) free_blocks_.erase(it);
        stats_.cached_bytes -= size;
        stats_.hits++;
        note_live(size);
        return ptr;
      }
    }
    void* ptr = mmap(nullptr, wanted, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      // Out of address space or memory: give the cache back and try once more.
      empty_cache();
      ptr = mmap(nullptr, wanted, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (ptr == MAP_FAILED) throw std::bad_alloc();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    block_size_[ptr] = wanted;
    stats_.misses++;
    note_live(wanted);
    return ptr;
  }

  void note_live(size_t size) {  // caller holds mutex_
    stats_.live_bytes += size;
    stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
    stats_.peak_reserved_bytes =
        std::max(stats_.peak_reserved_bytes, stats_.live_bytes + stats_.cached_bytes);
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;  // class size -> cached blocks
  std::unordered_map<void*, size_t> block_size_;      // every mmap'd block, live or cached
  size_t max_cached_bytes_;
  double max_reuse_ratio_;
  Stats stats_;
};

CachingCPUAllocator* g_allocator = nullptr;  // never deleted: tensors may outlive everything

void CachingCPUAllocator::release(void* ptr) { g_allocator->free_block(ptr); }

void lock_before_fork() { g_allocator->mutex().lock(); }
void unlock_after_fork() { g_allocator->mutex().unlock(); }

}  // namespace

extern "C" {

// Installs the allocator for every later CPU allocation. Returns 1 if installed now, 0 if it was
// already installed (the limits are then updated).
int qs_caching_allocator_install(uint64_t max_cached_bytes, double max_reuse_ratio) {
  if (g_allocator != nullptr) {
    g_allocator->set_limits(max_cached_bytes, max_reuse_ratio);
    return 0;
  }
  g_allocator = new CachingCPUAllocator(max_cached_bytes, max_reuse_ratio);
  pthread_atfork(&lock_before_fork, &unlock_after_fork, &unlock_after_fork);
  // Priority above the default allocator's 0, so nothing later replaces it by accident.
  c10::SetCPUAllocator(g_allocator, /*priority=*/1);
  return 1;
}

// Fills out[0..6] with live, peak live, cached, peak reserved bytes, hits, misses, unmapped.
int qs_caching_allocator_stats(uint64_t* out) {
  if (g_allocator == nullptr) return 0;
  const Stats s = g_allocator->stats();
  const uint64_t values[] = {s.live_bytes, s.peak_live_bytes, s.cached_bytes, s.peak_reserved_bytes,
                             s.hits, s.misses, s.unmapped};
  std::copy(std::begin(values), std::end(values), out);
  return 1;
}

uint64_t qs_caching_allocator_empty_cache() {
  return g_allocator == nullptr ? 0 : g_allocator->empty_cache();
}

void qs_caching_allocator_reset_peaks() {
  if (g_allocator != nullptr) g_allocator->reset_peaks();
}

}  // extern "C"
