// Boost.JSON is used header-only; its implementation is compiled exactly once,
// here, so every library that parses JSON links llmir_support.
#include <boost/json/src.hpp>
