#pragma once
/// \file Reading whole files as bytes for the format readers (safetensors, llama2.c, tokenizer): a private
/// memory map where the platform has one, otherwise the file read into memory. Every failure is a
/// format_error that starts "<format>: <path>: ".

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "polyformer/core/error.hpp"

#if !defined(POLYFORMER_NO_MMAP) && __has_include(<sys/mman.h>) && __has_include(<sys/stat.h>) && \
    __has_include(<fcntl.h>) && __has_include(<unistd.h>)
#define POLYFORMER_IO_POSIX 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#else
#define POLYFORMER_IO_POSIX 0
#endif

namespace polyformer::io::detail {

using polyformer::detail::cat;

/// "<format>: <path>: " — the start of every message about one file.
inline std::string file_prefix(std::string_view format, std::string_view path) { return cat(format, ": ", path, ": "); }

inline std::string errno_text(int err) { return std::generic_category().message(err); }

/// Read-only bytes: a private memory map of a file, or an owned buffer. Move-only.
class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(std::vector<unsigned char> bytes) noexcept
      : owned_(std::move(bytes)), data_(owned_.data()), size_(owned_.size()) {}
#if POLYFORMER_IO_POSIX
  /// Takes ownership of a mapping made by mmap(size bytes).
  static ByteBuffer adopt_mapping(void* map, std::size_t size) noexcept {
    ByteBuffer b;
    b.map_ = map;
    b.data_ = static_cast<const unsigned char*>(map);
    b.size_ = size;
    return b;
  }
#endif
  ByteBuffer(const ByteBuffer&) = delete;
  ByteBuffer& operator=(const ByteBuffer&) = delete;
  ByteBuffer(ByteBuffer&& o) noexcept { take(o); }
  ByteBuffer& operator=(ByteBuffer&& o) noexcept {
    if (this != &o) {
      release();
      take(o);
    }
    return *this;
  }
  ~ByteBuffer() { release(); }

  const unsigned char* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool mapped() const noexcept { return map_ != nullptr; }

 private:
  void take(ByteBuffer& o) noexcept {
    owned_ = std::move(o.owned_);
    map_ = std::exchange(o.map_, nullptr);
    data_ = map_ ? std::exchange(o.data_, nullptr) : owned_.data();
    o.data_ = nullptr;
    size_ = std::exchange(o.size_, 0);
  }
  void release() noexcept {
#if POLYFORMER_IO_POSIX
    if (map_) ::munmap(map_, size_);
#endif
    map_ = nullptr;
    owned_.clear();
    owned_.shrink_to_fit();
    data_ = nullptr;
    size_ = 0;
  }

  std::vector<unsigned char> owned_;
  void* map_ = nullptr;
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

#if POLYFORMER_IO_POSIX
/// Closes a file descriptor at scope exit.
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

/// Reads an open descriptor to EOF (works for pipes and files whose size changed).
inline std::vector<unsigned char> read_fd(int fd, std::size_t size_hint, const std::string& path,
                                          std::string_view format) {
  std::vector<unsigned char> bytes(std::max<std::size_t>(size_hint, 4096));
  std::size_t got = 0;
  for (;;) {
    if (got == bytes.size()) bytes.resize(bytes.size() * 2);
    const ::ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw format_error(cat(file_prefix(format, path), "cannot read: ", errno_text(errno)));
    }
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  bytes.resize(got);
  return bytes;
}
#endif

/// The whole file in memory (the fallback when mmap is unavailable; also handy in tests).
inline std::vector<unsigned char> read_file(const std::string& path, std::string_view format) {
#if POLYFORMER_IO_POSIX
  FdGuard f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw format_error(cat(file_prefix(format, path), "cannot open: ", errno_text(errno)));
  struct ::stat st {};
  const bool regular = ::fstat(f.fd, &st) == 0 && S_ISREG(st.st_mode);
  return read_fd(f.fd, regular ? static_cast<std::size_t>(st.st_size) : 0, path, format);
#else
  std::ifstream in(path, std::ios::binary);
  if (!in) throw format_error(cat(file_prefix(format, path), "cannot open"));
  std::vector<unsigned char> bytes;
  try {  // libstdc++ throws from underflow() for a directory, for example
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const std::ios_base::failure& e) {
    throw format_error(cat(file_prefix(format, path), "cannot read: ", e.what()));
  }
  if (in.bad()) throw format_error(cat(file_prefix(format, path), "cannot read"));
  return bytes;
#endif
}

/// A read-only private map of a regular, non-empty file; otherwise the file read into memory.
inline ByteBuffer map_file(const std::string& path, std::string_view format) {
#if POLYFORMER_IO_POSIX
  FdGuard f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) throw format_error(cat(file_prefix(format, path), "cannot open: ", errno_text(errno)));
  struct ::stat st {};
  if (::fstat(f.fd, &st) != 0) throw format_error(cat(file_prefix(format, path), "cannot stat: ", errno_text(errno)));
  if (S_ISREG(st.st_mode) && st.st_size > 0 &&
      static_cast<std::uint64_t>(st.st_size) <= std::numeric_limits<std::size_t>::max()) {
    const auto size = static_cast<std::size_t>(st.st_size);
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (map != MAP_FAILED) return ByteBuffer::adopt_mapping(map, size);  // the map outlives the descriptor
  }
  return ByteBuffer(read_fd(f.fd, S_ISREG(st.st_mode) ? static_cast<std::size_t>(st.st_size) : 0, path, format));
#else
  return ByteBuffer(read_file(path, format));
#endif
}

/// Writes bytes to a temporary file beside `path`, then renames it over `path`, so readers that have the
/// old file mapped keep a valid mapping and a failed write leaves any existing file untouched.
inline void write_file_replace(const std::string& path, const std::vector<unsigned char>& bytes,
                               std::string_view format) {
#if POLYFORMER_IO_POSIX
  static std::atomic<unsigned> counter{0};
  const std::string tmp = cat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) throw format_error(cat(file_prefix(format, path), "cannot create '", tmp, "': ", errno_text(errno)));
  const auto fail = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    throw format_error(cat(file_prefix(format, path), what, ": ", errno_text(err)));
  };
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ::ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      fail("cannot write", err);
    }
    done += static_cast<std::size_t>(w);
  }
  if (::close(fd) != 0) fail("cannot write", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename the temporary file into place", errno);
#else
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw format_error(cat(file_prefix(format, path), "cannot create"));
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw format_error(cat(file_prefix(format, path), "cannot write"));
#endif
}

}  // namespace polyformer::io::detail
