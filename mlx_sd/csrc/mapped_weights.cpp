// Weights mapped from their file instead of read into fresh memory (mlx_sd.mapped_weights uses this).
//
// mx.load reads a safetensors file into newly allocated buffers: every page of them is faulted in
// and zeroed by the kernel before the copy (issue 6: 1.7 GB for SD1.5's UNet, 0.5-3 s here
// depending on how recently the VM's host took freed memory back). A private mapping of the file
// uses the page cache's pages themselves. mlx's CPU allocator has no way to wrap foreign memory
// (make_buffer returns null), but an array can own any Buffer with its own deleter; its CPU Buffer
// stores a size word before the data (raw_ptr() is ptr + 8), so a tensor's Buffer starts 8 bytes
// before the tensor, inside the mapped file. `mapped_array` checks that the data pointer is the
// tensor's and throws otherwise, and the caller then reads the file as before. The mapping is
// copy-on-write: nothing written to an array can reach the file.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>

#include "cpu_kernel_support.h"

namespace mlx_sd {

Mapping::~Mapping() {
  if (base != nullptr) munmap(base, size);
}

std::shared_ptr<Mapping> map_file(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(path + ": " + std::strerror(errno));
  struct stat info{};
  if (fstat(fd, &info) != 0 || info.st_size <= 0) {
    close(fd);
    throw std::runtime_error(path + ": cannot map an empty or unreadable file");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(info.st_size);
  void* base = mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int error = errno;
  close(fd);  // the mapping keeps the file
  if (base == MAP_FAILED) throw std::runtime_error(path + ": mmap failed: " + std::strerror(error));
  mapping->base = base;
#ifdef MADV_POPULATE_READ
  madvise(mapping->base, mapping->size, MADV_POPULATE_READ);  // map every page now (reading it if it is not cached)
#endif
  return mapping;
}

mx::array mapped_array(const std::shared_ptr<Mapping>& mapping, size_t offset, const std::vector<int>& shape, mx::Dtype dtype) {
  size_t bytes = dtype.size();
  for (const int extent : shape) bytes *= static_cast<size_t>(extent);
  if (offset < sizeof(size_t) || offset + bytes > mapping->size) throw std::invalid_argument("tensor outside the mapped file");
  char* data = static_cast<char*>(mapping->base) + offset;
  mx::allocator::Buffer buffer(data - sizeof(size_t));
  if (buffer.raw_ptr() != data) throw std::runtime_error("this mlx's CPU buffers cannot point into a mapped file");
  mx::array out(mx::allocator::Data(buffer, [mapping](mx::allocator::Buffer) {}), mx::Shape(shape.begin(), shape.end()), dtype);
  if (out.data<char>() != data) throw std::runtime_error("this mlx's arrays cannot point into a mapped file");
  return out;
}

}  // namespace mlx_sd
