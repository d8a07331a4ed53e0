// The library's exception type and the checks that build messages naming the op and the shapes.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace flsl {

/// Every error the library reports: bad shapes, dtypes, devices, files. The message names the
/// operation (or file) and the values that were wrong.
class error : public std::runtime_error {
 public:
  explicit error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

/// Throws flsl::error with the concatenation of the parts, e.g.
/// `fail("matmul: inner dimensions differ: ", a.shape(), " vs ", b.shape())`.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw error(detail::concat(parts...));
}

#define FLSL_CHECK(cond, ...)               \
  do {                                      \
    if (!(cond)) ::flsl::fail(__VA_ARGS__); \
  } while (0)

}  // namespace flsl
