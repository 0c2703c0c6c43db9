// The arrays of a kernel case and the checks the drivers share (cases.h).

#include <algorithm>
#include <cstring>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "tests/kernels/cases.h"

namespace routemoe::kerneltest {

// ------------------------------------------------------------------------------------------------
// Data

std::vector<double>& Data::value(const std::string& name, i64 n, double fill) {
  Array& a = arrays_[name] = Array{};
  a.kind = Kind::Value;
  a.values.assign(static_cast<std::size_t>(n), fill);
  return a.values;
}

std::vector<double>& Data::wide(const std::string& name, i64 n, double fill) {
  Array& a = arrays_[name] = Array{};
  a.kind = Kind::Wide;
  a.values.assign(static_cast<std::size_t>(n), fill);
  return a.values;
}

std::vector<i32>& Data::index(const std::string& name, i64 n, i32 fill) {
  Array& a = arrays_[name] = Array{};
  a.kind = Kind::Index;
  a.ids.assign(static_cast<std::size_t>(n), fill);
  return a.ids;
}

std::vector<i64>& Data::longs(const std::string& name, i64 n, i64 fill) {
  Array& a = arrays_[name] = Array{};
  a.kind = Kind::Long;
  a.ints.assign(static_cast<std::size_t>(n), fill);
  return a.ints;
}

std::vector<i64>& Data::bytes(const std::string& name, i64 n, i64 fill) {
  Array& a = arrays_[name] = Array{};
  a.kind = Kind::Byte;
  a.ints.assign(static_cast<std::size_t>(n), fill);
  return a.ints;
}

void Data::alias(const std::string& name, const std::string& storage) {
  const Array& s = at(storage);
  if (!s.storage.empty()) throw std::logic_error("alias of an alias: " + name);
  Array& a = arrays_[name] = Array{};
  a.kind = s.kind;
  a.storage = storage;
}

Data Data::shape() const {
  Data d;
  for (const auto& [name, a] : arrays_) {
    Array& b = d.arrays_[name];
    b.kind = a.kind;
    b.storage = a.storage;
  }
  return d;
}

bool Data::has(const std::string& name) const {
  return arrays_.count(name) != 0;
}

const Data::Array& Data::at(const std::string& name) const {
  const auto it = arrays_.find(name);
  if (it == arrays_.end()) throw std::out_of_range("kernel case has no array '" + name + "'");
  if (!it->second.storage.empty()) return at(it->second.storage);
  return it->second;
}

const std::vector<double>& Data::operator[](const std::string& name) const {
  const Array& a = at(name);
  if (a.kind != Kind::Value && a.kind != Kind::Wide)
    throw std::logic_error("'" + name + "' is an integer array");
  return a.values;
}

std::vector<double>& Data::values(const std::string& name) {
  return const_cast<std::vector<double>&>(std::as_const(*this)[name]);
}

const std::vector<i32>& Data::ids(const std::string& name) const {
  const Array& a = at(name);
  if (a.kind != Kind::Index) throw std::logic_error("'" + name + "' is not an index array");
  return a.ids;
}

const std::vector<i64>& Data::ints(const std::string& name) const {
  const Array& a = at(name);
  if (a.kind != Kind::Long && a.kind != Kind::Byte)
    throw std::logic_error("'" + name + "' is not an int64 or uint8 array");
  return a.ints;
}

const std::string& Data::storage_of(const std::string& name) const {
  const auto it = arrays_.find(name);
  if (it == arrays_.end()) throw std::out_of_range("kernel case has no array '" + name + "'");
  return it->second.storage.empty() ? it->first : it->second.storage;
}

// ------------------------------------------------------------------------------------------------
// Bind, Expect

template <typename T>
void* Bind<T>::get(const std::string& name) const {
  const auto it = ptrs_.find(name);
  if (it == ptrs_.end()) throw std::out_of_range("kernel call: no array '" + name + "'");
  return it->second;
}

template class Bind<float>;
template class Bind<double>;

std::vector<Want>& Expect::out(const std::string& name, i64 n, Rule rule) {
  Output& o = outputs_[name] = Output{};
  o.rule = rule;
  o.want.assign(static_cast<std::size_t>(n), Want{});
  return o.want;
}

// ------------------------------------------------------------------------------------------------
// HostArrays

template <typename T>
HostArrays<T>::HostArrays(const Data& data) : layout_(std::make_shared<const Data>(data.shape())) {
  for (const auto& [name, a] : data.arrays()) {
    if (!a.storage.empty()) continue;
    switch (a.kind) {
      case Kind::Value:
        vals_[name].assign(a.values.size() + kGuard, static_cast<T>(kSentinel));
        break;
      case Kind::Wide:
        wides_[name].assign(a.values.size() + kGuard, kSentinel);
        break;
      case Kind::Index:
        ids_[name].assign(a.ids.size() + kGuard, kBadIndex);
        break;
      case Kind::Long:
        longs_[name].assign(a.ints.size() + kGuard, kBadLong);
        break;
      case Kind::Byte:
        bytes_[name].assign(a.ints.size() + kGuard, kByteGuard);
        break;
    }
  }
  load(data);
}

template <typename T>
void HostArrays<T>::load(const Data& data) {
  for (const auto& [name, a] : data.arrays()) {
    if (!a.storage.empty()) continue;
    switch (a.kind) {
      case Kind::Value: {
        auto& v = vals_.at(name);
        if (v.size() != a.values.size() + kGuard) throw std::logic_error("layout of " + name);
        for (std::size_t i = 0; i < a.values.size(); ++i) v[i] = static_cast<T>(a.values[i]);
        std::fill(v.begin() + static_cast<std::ptrdiff_t>(a.values.size()), v.end(),
                  static_cast<T>(kSentinel));
        break;
      }
      case Kind::Wide: {
        auto& v = wides_.at(name);
        if (v.size() != a.values.size() + kGuard) throw std::logic_error("layout of " + name);
        std::copy(a.values.begin(), a.values.end(), v.begin());
        std::fill(v.begin() + static_cast<std::ptrdiff_t>(a.values.size()), v.end(), kSentinel);
        break;
      }
      case Kind::Index: {
        auto& v = ids_.at(name);
        if (v.size() != a.ids.size() + kGuard) throw std::logic_error("layout of " + name);
        std::copy(a.ids.begin(), a.ids.end(), v.begin());
        std::fill(v.begin() + static_cast<std::ptrdiff_t>(a.ids.size()), v.end(), kBadIndex);
        break;
      }
      case Kind::Long: {
        auto& v = longs_.at(name);
        if (v.size() != a.ints.size() + kGuard) throw std::logic_error("layout of " + name);
        std::copy(a.ints.begin(), a.ints.end(), v.begin());
        std::fill(v.begin() + static_cast<std::ptrdiff_t>(a.ints.size()), v.end(), kBadLong);
        break;
      }
      case Kind::Byte: {
        auto& v = bytes_.at(name);
        if (v.size() != a.ints.size() + kGuard) throw std::logic_error("layout of " + name);
        for (std::size_t i = 0; i < a.ints.size(); ++i) {
          if (a.ints[i] < 0 || a.ints[i] > 255) throw std::logic_error("byte value in " + name);
          v[i] = static_cast<std::uint8_t>(a.ints[i]);
        }
        std::fill(v.begin() + static_cast<std::ptrdiff_t>(a.ints.size()), v.end(), kByteGuard);
        break;
      }
    }
  }
}

template <typename T>
Data HostArrays<T>::snapshot() const {
  Data d = *layout_;
  for (const auto& [name, v] : vals_) {
    auto& out = d.value(name, static_cast<i64>(v.size()) - kGuard);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(v[i]);
  }
  for (const auto& [name, v] : wides_)
    d.wide(name, static_cast<i64>(v.size()) - kGuard)
        .assign(v.begin(), v.end() - static_cast<std::ptrdiff_t>(kGuard));
  for (const auto& [name, v] : ids_)
    d.index(name, static_cast<i64>(v.size()) - kGuard)
        .assign(v.begin(), v.end() - static_cast<std::ptrdiff_t>(kGuard));
  for (const auto& [name, v] : longs_)
    d.longs(name, static_cast<i64>(v.size()) - kGuard)
        .assign(v.begin(), v.end() - static_cast<std::ptrdiff_t>(kGuard));
  for (const auto& [name, v] : bytes_)
    d.bytes(name, static_cast<i64>(v.size()) - kGuard)
        .assign(v.begin(), v.end() - static_cast<std::ptrdiff_t>(kGuard));
  return d;
}

template <typename T>
Bind<T> HostArrays<T>::bind() {
  Bind<T> b;
  for (const auto& [name, a] : layout_->arrays()) {
    const std::string& s = layout_->storage_of(name);
    switch (a.kind) {
      case Kind::Value:
        b.set(name, vals_.at(s).data());
        break;
      case Kind::Wide:
        b.set(name, wides_.at(s).data());
        break;
      case Kind::Index:
        b.set(name, ids_.at(s).data());
        break;
      case Kind::Long:
        b.set(name, longs_.at(s).data());
        break;
      case Kind::Byte:
        b.set(name, bytes_.at(s).data());
        break;
    }
  }
  return b;
}

template <typename T>
std::span<const T> HostArrays<T>::values(const std::string& name) const {
  const auto& v = vals_.at(layout_->storage_of(name));
  return std::span<const T>(v.data(), v.size() - kGuard);
}

template <typename T>
std::span<T> HostArrays<T>::values(const std::string& name) {
  auto& v = vals_.at(layout_->storage_of(name));
  return std::span<T>(v.data(), v.size() - kGuard);
}

template <typename T>
std::span<const double> HostArrays<T>::wide(const std::string& name) const {
  const auto& v = wides_.at(layout_->storage_of(name));
  return std::span<const double>(v.data(), v.size() - kGuard);
}

template <typename T>
std::span<double> HostArrays<T>::wide(const std::string& name) {
  auto& v = wides_.at(layout_->storage_of(name));
  return std::span<double>(v.data(), v.size() - kGuard);
}

template <typename T>
std::span<const i32> HostArrays<T>::ids(const std::string& name) const {
  const auto& v = ids_.at(layout_->storage_of(name));
  return std::span<const i32>(v.data(), v.size() - kGuard);
}

template <typename T>
std::span<const i64> HostArrays<T>::longs(const std::string& name) const {
  const auto& v = longs_.at(layout_->storage_of(name));
  return std::span<const i64>(v.data(), v.size() - kGuard);
}

template <typename T>
std::span<const std::uint8_t> HostArrays<T>::bytes(const std::string& name) const {
  const auto& v = bytes_.at(layout_->storage_of(name));
  return std::span<const std::uint8_t>(v.data(), v.size() - kGuard);
}

template <typename T>
void HostArrays<T>::assign(const std::string& name, std::span<const double> v) {
  const std::string& s = layout_->storage_of(name);
  auto fill = [&](auto& raw, auto convert) {
    if (raw.size() != v.size() + kGuard) throw std::logic_error("assign: size of " + name);
    for (std::size_t i = 0; i < v.size(); ++i) raw[i] = convert(v[i]);
  };
  switch (layout_->arrays().at(s).kind) {
    case Kind::Value:
      fill(vals_.at(s), [](double x) { return static_cast<T>(x); });
      break;
    case Kind::Wide:
      fill(wides_.at(s), [](double x) { return x; });
      break;
    case Kind::Index:
      fill(ids_.at(s), [](double x) { return static_cast<i32>(x); });
      break;
    case Kind::Long:
      fill(longs_.at(s), [](double x) { return static_cast<i64>(x); });
      break;
    case Kind::Byte:
      fill(bytes_.at(s), [](double x) { return static_cast<std::uint8_t>(x); });
      break;
  }
}

template <typename T>
std::string HostArrays<T>::broken_guards() const {
  std::string out;
  for (const auto& [name, v] : vals_)
    for (std::size_t i = v.size() - kGuard; i < v.size(); ++i)
      if (static_cast<double>(v[i]) != kSentinel) {
        out += " " + name;
        break;
      }
  for (const auto& [name, v] : wides_)
    for (std::size_t i = v.size() - kGuard; i < v.size(); ++i)
      if (v[i] != kSentinel) {
        out += " " + name;
        break;
      }
  for (const auto& [name, v] : ids_)
    for (std::size_t i = v.size() - kGuard; i < v.size(); ++i)
      if (v[i] != kBadIndex) {
        out += " " + name;
        break;
      }
  for (const auto& [name, v] : longs_)
    for (std::size_t i = v.size() - kGuard; i < v.size(); ++i)
      if (v[i] != kBadLong) {
        out += " " + name;
        break;
      }
  for (const auto& [name, v] : bytes_)
    for (std::size_t i = v.size() - kGuard; i < v.size(); ++i)
      if (v[i] != kByteGuard) {
        out += " " + name;
        break;
      }
  return out;
}

template class HostArrays<float>;
template class HostArrays<double>;

// ------------------------------------------------------------------------------------------------
// Checks

namespace {

// The data region of an integer array (Index, Long, Byte) as int64.
template <typename T>
std::vector<i64> integers(const HostArrays<T>& h, const std::string& name) {
  switch (h.layout().arrays().at(h.layout().storage_of(name)).kind) {
    case Kind::Index: {
      const auto v = h.ids(name);
      return {v.begin(), v.end()};
    }
    case Kind::Long: {
      const auto v = h.longs(name);
      return {v.begin(), v.end()};
    }
    case Kind::Byte: {
      const auto v = h.bytes(name);
      return {v.begin(), v.end()};
    }
    default:
      throw std::logic_error("'" + name + "' is not an integer array");
  }
}

bool is_integer(Kind k) {
  return k == Kind::Index || k == Kind::Long || k == Kind::Byte;
}

}  // namespace

template <typename T>
void expect_outputs(const HostArrays<T>& got, const Expect& expect, const std::string& what) {
  for (const auto& [name, o] : expect.outputs()) {
    const std::size_t n = o.want.size();
    if (is_integer(got.layout().arrays().at(got.layout().storage_of(name)).kind)) {
      // Integer outputs: exactly the reference's integers.
      ASSERT_EQ(o.rule, Rule::Exact) << what << ": integer output " << name;
      const std::vector<i64> g = integers(got, name);
      ASSERT_EQ(g.size(), n) << what << " " << name;
      std::size_t bad = 0;
      std::ostringstream os;
      for (std::size_t i = 0; i < n; ++i) {
        if (static_cast<double>(g[i]) == o.want[i].value) continue;
        if (bad < 6) os << "\n  [" << i << "] got " << g[i] << " expected " << o.want[i].value;
        ++bad;
      }
      EXPECT_EQ(bad, 0u) << what << ": output " << name << ", " << bad << " of " << n
                         << " elements differ:" << os.str();
      continue;
    }
    std::vector<double> g(n), w(n), tol(n);
    if (o.rule == Rule::Wide) {
      const auto v = got.wide(name);
      ASSERT_EQ(v.size(), n) << what << " " << name;
      std::copy(v.begin(), v.end(), g.begin());
    } else {
      const auto v = got.values(name);
      ASSERT_EQ(v.size(), n) << what << " " << name;
      for (std::size_t i = 0; i < n; ++i) g[i] = static_cast<double>(v[i]);
    }
    for (std::size_t i = 0; i < n; ++i) {
      const Want& x = o.want[i];
      w[i] = x.value;
      tol[i] = (o.rule == Rule::Wide ? bound_wide(x.ck) : bound<T>(x.ck)) * x.mag;
    }
    if (o.rule == Rule::Exact) {
      std::vector<T> gt(got.values(name).begin(), got.values(name).end()), wt(n);
      for (std::size_t i = 0; i < n; ++i) wt[i] = static_cast<T>(w[i]);
      EXPECT_TRUE(same_bits(gt, wt)) << what << ": output " << name << " (bitwise)";
    } else {
      EXPECT_TRUE(within(g, w, tol)) << what << ": output " << name;
    }
  }
}

template <typename T>
void expect_untouched(const HostArrays<T>& got, const HostArrays<T>& before, const Expect& expect,
                      const std::string& what) {
  const Data& layout = got.layout();
  std::set<std::string> written;
  for (const auto& [name, o] : expect.outputs()) written.insert(layout.storage_of(name));
  for (const auto& [name, a] : layout.arrays()) {
    if (!a.storage.empty() || written.count(name) != 0) continue;
    switch (a.kind) {
      case Kind::Value:
        EXPECT_TRUE(same_bits(got.raw_values(name), before.raw_values(name)))
            << what << ": array " << name << " must not be written";
        break;
      case Kind::Wide:
        EXPECT_TRUE(same_bits(got.wide(name), before.wide(name)))
            << what << ": array " << name << " must not be written";
        break;
      case Kind::Index:
        EXPECT_TRUE(same_bits(got.raw_ids(name), before.raw_ids(name)))
            << what << ": array " << name << " must not be written";
        break;
      case Kind::Long:
        EXPECT_TRUE(same_bits(got.raw_longs(name), before.raw_longs(name)))
            << what << ": array " << name << " must not be written";
        break;
      case Kind::Byte:
        EXPECT_TRUE(same_bits(got.raw_bytes(name), before.raw_bytes(name)))
            << what << ": array " << name << " must not be written";
        break;
    }
  }
  const std::string broken = got.broken_guards();
  EXPECT_TRUE(broken.empty()) << what << ": written past the end of" << broken;
}

template <typename T>
void expect_same_arrays(const HostArrays<T>& a, const HostArrays<T>& b, const std::string& what) {
  for (const auto& [name, arr] : a.layout().arrays()) {
    if (!arr.storage.empty()) continue;
    switch (arr.kind) {
      case Kind::Value:
        EXPECT_TRUE(same_bits(a.raw_values(name), b.raw_values(name))) << what << ": " << name;
        break;
      case Kind::Wide:
        EXPECT_TRUE(same_bits(a.wide(name), b.wide(name))) << what << ": " << name;
        break;
      case Kind::Index:
        EXPECT_TRUE(same_bits(a.raw_ids(name), b.raw_ids(name))) << what << ": " << name;
        break;
      case Kind::Long:
        EXPECT_TRUE(same_bits(a.raw_longs(name), b.raw_longs(name))) << what << ": " << name;
        break;
      case Kind::Byte:
        EXPECT_TRUE(same_bits(a.raw_bytes(name), b.raw_bytes(name))) << what << ": " << name;
        break;
    }
  }
}

#define ROUTEMOE_INSTANTIATE_CHECKS(T)                                                         \
  template void expect_outputs<T>(const HostArrays<T>&, const Expect&, const std::string&);    \
  template void expect_untouched<T>(const HostArrays<T>&, const HostArrays<T>&, const Expect&, \
                                    const std::string&);                                       \
  template void expect_same_arrays<T>(const HostArrays<T>&, const HostArrays<T>&,              \
                                      const std::string&);

ROUTEMOE_INSTANTIATE_CHECKS(float)
ROUTEMOE_INSTANTIATE_CHECKS(double)

#undef ROUTEMOE_INSTANTIATE_CHECKS

// ------------------------------------------------------------------------------------------------
// Table queries

std::vector<std::string> kernels(const std::function<bool(const Case&)>& pred) {
  std::vector<std::string> out;
  for (const Case& c : cases())
    if (pred(c) && std::find(out.begin(), out.end(), c.kernel) == out.end())
      out.push_back(c.kernel);
  return out;
}

}  // namespace routemoe::kerneltest
