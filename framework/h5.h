#pragma once
// A thin RAII layer over the HDF5 C API for what routemoe stores: n-d float32/int32/uint8
// datasets, scalars and string attributes, addressed by '/'-separated paths (intermediate
// groups are created on write). Every HDF5 call is checked (RM_HDF5_CHECK), so failures are
// Error(Hdf5) naming the call and HDF5's own message; the file path is added by the callers
// that know the context.
//
// Writes capture the operating system's error: a create, write, attribute or flush call that
// fails after the system set errno (disk full, quota, permissions, a read-only file system) is
// Error(Io) "<file>: cannot write <object>: <strerror> (errno N; HDF5: <call>: <message>)", so
// the message names the file and the cause whatever HDF5 reports around it.

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "framework/tensor.h"

namespace routemoe::h5 {

// An owned HDF5 identifier of any kind, closed with H5Oclose/H5Fclose/... in the destructor
// (never throws).
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle();
  hid_t id() const noexcept { return id_; }
  bool valid() const noexcept { return id_ >= 0; }
  // Gives up ownership without closing; returns the identifier.
  hid_t release() noexcept;

 private:
  hid_t id_ = H5I_INVALID_HID;
};

class File {
 public:
  // Creates (truncating) `path`. HDF5's automatic error printing is switched off.
  static File create(const std::string& path);
  // Creates (truncating) `path` for collective writes by all ranks of the MPI communicator
  // `mpi_comm` (an MPI_Comm, passed as a pointer to it). Needs parallel HDF5
  // (ROUTEMOE_HAVE_PARALLEL_HDF5); every dataset/attribute call is then collective.
  static File create_parallel(const std::string& path, const void* mpi_comm);
  // Opens `path` read-only. A file left marked "open for writing" by an appender that was
  // killed (see open_append) is opened in SWMR-read mode, which reads it as it was last flushed.
  static File open_read(const std::string& path);
  static File open_rw(const std::string& path);
  // Opens an existing file (newest format) to append rows to its extendible datasets in place,
  // in HDF5's SWMR-write mode: its metadata flushes are ordered so that the file on disk stays
  // readable at whatever point a killed process stopped. Marks left by an appender that died
  // are cleared and the end of allocated space is moved past everything it wrote, so nothing it
  // left is overwritten. No dataset or group can be created in this mode.
  static File open_append(const std::string& path);

  const std::string& path() const { return path_; }
  hid_t id() const { return handle_.id(); }
  bool exists(const std::string& obj) const;
  // Flushes to disk and closes (errors are reported, unlike in the destructor).
  void close();
  // Writes everything buffered to the file (collective in a parallel file; in SWMR-write mode in
  // dependency order). After a successful flush, close() has nothing left to write.
  void flush();
  // Forgets the file without closing it: for the abort path of a parallel file after a failed
  // write, where the close would be a collective that the ranks can no longer agree on. The
  // HDF5 identifier leaks (the process is about to end). Never throws.
  void abandon() noexcept;

  void write_f32(const std::string& obj, const float* data, const Shape& shape);
  void write_i32(const std::string& obj, const std::int32_t* data, const Shape& shape);
  void write_u8(const std::string& obj, const std::uint8_t* data, const Shape& shape);
  void write_i64(const std::string& obj, const std::int64_t* data, const Shape& shape);
  void write_scalar(const std::string& obj, double value);
  void set_attr(const std::string& obj, const std::string& name, const std::string& value);
  void set_attr(const std::string& obj, const std::string& name, std::int64_t value);

  // A float32 dataset of `global_shape` with Fletcher32 checksums, chunked by `chunk_rows`
  // rows of dimension 0 (0: one chunk). Collective in a parallel file.
  void create_f32(const std::string& obj, const Shape& global_shape, std::int64_t chunk_rows = 0);
  // Writes rows [row_begin, row_begin + rows) of dimension 0 from `data`. In a parallel file
  // every rank calls it for every dataset (collective transfer); a rank with nothing to write
  // passes rows = 0.
  void write_f32_rows(const std::string& obj, std::int64_t row_begin, std::int64_t rows,
                      const float* data);
  // Reads rows [row_begin, row_begin + rows) of dimension 0.
  std::vector<float> read_f32_rows(const std::string& obj, std::int64_t row_begin,
                                   std::int64_t rows) const;
  bool parallel() const { return parallel_; }

  // ---- extendible datasets ("row" = an index of dimension 0) ----
  enum class Elem { I32, I64, F32, U8, Str16 };  // Str16: fixed 16-byte NUL-padded strings
  // A dataset of shape [0, row...] with unlimited rows, `chunk_rows` rows per chunk, Fletcher32.
  void create_rows(const std::string& obj, Elem elem, const Shape& row, std::int64_t chunk_rows);
  // Number of rows (dimension 0) of a dataset.
  std::int64_t rows(const std::string& obj) const;
  // Writes rows [begin, begin + n) from `data` (elements of `elem`; Str16: 16 bytes per row),
  // growing the dataset to begin + n rows when it is shorter.
  void write_rows(const std::string& obj, Elem elem, std::int64_t begin, std::int64_t n,
                  const void* data);
  // Reads rows [begin, begin + n) into `data` (Error(Data) when out of range or unreadable).
  void read_rows(const std::string& obj, Elem elem, std::int64_t begin, std::int64_t n,
                 void* data) const;

  Shape shape_of(const std::string& obj) const;
  std::vector<float> read_f32(const std::string& obj, Shape* shape = nullptr) const;
  std::vector<std::int32_t> read_i32(const std::string& obj, Shape* shape = nullptr) const;
  std::vector<std::int64_t> read_i64(const std::string& obj, Shape* shape = nullptr) const;
  double read_scalar(const std::string& obj) const;
  std::string attr_string(const std::string& obj, const std::string& name) const;
  std::int64_t attr_int(const std::string& obj, const std::string& name) const;
  bool has_attr(const std::string& obj, const std::string& name) const;
  // Names of the members of a group, sorted.
  std::vector<std::string> list(const std::string& group) const;

 private:
  File(Handle h, std::string path, bool parallel = false)
      : handle_(std::move(h)), path_(std::move(path)), parallel_(parallel) {}
  void write_raw(const std::string& obj, hid_t mem_type, hid_t file_type, const void* data,
                 const Shape& shape);
  void read_raw(const std::string& obj, hid_t mem_type, void* data, std::int64_t expect) const;

  Handle handle_;
  std::string path_;
  bool parallel_ = false;
};

}  // namespace routemoe::h5
