#include "llmir/net/Config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace llmir::net {
namespace {

template <typename Int>
bool parseInt(const std::string &text, Int &out) {
  int64_t wide = 0;
  const char *end = text.data() + text.size();
  if constexpr (std::is_unsigned_v<Int>) {
    uint64_t u = 0;
    auto [p, ec] = std::from_chars(text.data(), end, u);
    if (ec != std::errc() || p != end || u > std::numeric_limits<Int>::max())
      return false;
    out = static_cast<Int>(u);
    return true;
  } else {
    auto [p, ec] = std::from_chars(text.data(), end, wide);
    if (ec != std::errc() || p != end || wide > std::numeric_limits<Int>::max() ||
        wide < std::numeric_limits<Int>::min())
      return false;
    out = static_cast<Int>(wide);
    return true;
  }
}

// "1,2,8": every item a positive int.
bool parsePositiveList(const std::string &text, std::vector<int> &out) {
  std::vector<int> items;
  for (size_t begin = 0; begin <= text.size();) {
    const size_t end = std::min(text.find(',', begin), text.size());
    int item = 0;
    if (!parseInt(text.substr(begin, end - begin), item) || item <= 0)
      return false;
    items.push_back(item);
    begin = end + 1;
  }
  out = std::move(items);
  return true;
}

const char *typeName(const auto &target) {
  using T = std::remove_pointer_t<std::decay_t<decltype(target)>>;
  if constexpr (std::is_same_v<T, std::vector<int>>) return "list of positive integers";
  else if constexpr (std::is_same_v<T, LogLevel>) return "log level (debug, info, warn or error)";
  else if constexpr (std::is_same_v<T, std::string>) return "string";
  else if constexpr (std::is_same_v<T, bool>) return "bool";
  else if constexpr (std::is_same_v<T, double>) return "number";
  else if constexpr (std::is_unsigned_v<T>) return "unsigned integer";
  else return "integer";
}

// Flattens nested maps into dotted keys; scalars only.
Status flatten(const YAML::Node &node, const std::string &prefix,
               const std::string &path,
               std::vector<std::pair<std::string, std::string>> &out) {
  if (node.IsMap()) {
    for (const auto &item : node) {
      std::string key = item.first.as<std::string>();
      LLMIR_RETURN_IF_ERROR(flatten(item.second, prefix.empty() ? key : prefix + "." + key,
                                    path, out));
    }
    return Status::ok();
  }
  if (node.IsScalar()) {
    out.emplace_back(prefix, node.Scalar());
    return Status::ok();
  }
  if (node.IsNull()) // "key:" with no value keeps the default
    return Status::ok();
  return Status::error(path + ": key '" + prefix +
                       "' must be a scalar or a map, not a sequence");
}
} // namespace

bool Config::isWellSpelled(const std::string &key) {
  // segment := word ('-' word)*, word := [a-z0-9]+ starting with a letter;
  // key := segment ('.' segment)*
  bool atWordStart = true, atSegmentStart = true;
  for (char c : key) {
    if (c == '.' || c == '-') {
      if (atWordStart)
        return false;
      atWordStart = true;
      atSegmentStart = c == '.';
      continue;
    }
    const bool letter = c >= 'a' && c <= 'z', digit = c >= '0' && c <= '9';
    if (!letter && !(digit && !atSegmentStart))
      return false;
    atWordStart = atSegmentStart = false;
  }
  return !key.empty() && !atWordStart;
}

void Config::addField(std::string key, Target target, std::string doc) {
  if (!isWellSpelled(key) && bindingError_.empty())
    bindingError_ = service_ + ": config key '" + key +
                    "' is not spelled by the convention (lower-case words joined by '-', "
                    "groups by '.')";
  fields_.push_back({std::move(key), target, std::move(doc)});
}
void Config::add(std::string k, std::string *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, bool *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, int *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, int64_t *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, uint16_t *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, uint32_t *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, uint64_t *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, double *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, std::vector<int> *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::add(std::string k, LogLevel *t, std::string d) { addField(std::move(k), t, std::move(d)); }
void Config::addPositional(std::string name, std::vector<std::string> *target, std::string doc) {
  positional_ = target;
  positionalName_ = std::move(name);
  positionalDoc_ = std::move(doc);
}

Config::Field *Config::find(const std::string &key) {
  for (Field &f : fields_)
    if (f.key == key)
      return &f;
  return nullptr;
}

std::string Config::envName(const std::string &key) {
  std::string name = "LLMIR_";
  for (char c : key)
    name += (c == '.' || c == '-') ? '_' : static_cast<char>(std::toupper(
                                                static_cast<unsigned char>(c)));
  return name;
}

Status Config::unknownKey(const std::string &key, const std::string &source) const {
  std::string message = source + ": unknown " + service_ + " config key '" + key + "'";
  // The one near miss worth naming: the other word separator.
  std::string respelled = key;
  for (char &c : respelled)
    if (c == '_')
      c = '-';
  for (const Field &f : fields_)
    if (f.key == respelled && respelled != key)
      return Status::error(message + " (keys join words with '-': did you mean '" +
                           respelled + "'?)");
  return Status::error(message + " (see --help for the known keys)");
}

Status Config::set(const std::string &key, const std::string &value,
                   const std::string &source) {
  Field *field = find(key);
  if (!field)
    return unknownKey(key, source);
  bool ok = std::visit(
      [&](auto *target) {
        using T = std::remove_pointer_t<decltype(target)>;
        if constexpr (std::is_same_v<T, std::string>) {
          *target = value;
          return true;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (value == "true" || value == "1" || value == "yes" || value == "on")
            *target = true;
          else if (value == "false" || value == "0" || value == "no" || value == "off")
            *target = false;
          else
            return false;
          return true;
        } else if constexpr (std::is_same_v<T, std::vector<int>>) {
          return parsePositiveList(value, *target);
        } else if constexpr (std::is_same_v<T, LogLevel>) {
          return parseLogLevel(value, *target);
        } else if constexpr (std::is_same_v<T, double>) {
          char *end = nullptr;
          double d = std::strtod(value.c_str(), &end);
          if (value.empty() || *end != '\0')
            return false;
          *target = d;
          return true;
        } else {
          return parseInt(value, *target);
        }
      },
      field->target);
  if (ok)
    return Status::ok();
  const std::string type =
      std::visit([](auto *t) { return std::string(typeName(t)); }, field->target);
  const char *article = type.find_first_of("aeiou") == 0 ? "an " : "a ";
  return Status::error(source + ": config key '" + key + "' expects " + article + type +
                       ", got '" + value + "'");
}

Status Config::loadYamlFile(const std::string &path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const std::exception &e) {
    return Status::error("config file " + path + ": " + e.what());
  }
  std::vector<std::pair<std::string, std::string>> entries;
  if (!root.IsNull() && !root.IsMap())
    return Status::error("config file " + path + ": expected a map of keys at the top");
  try {
    LLMIR_RETURN_IF_ERROR(flatten(root, "", "config file " + path, entries));
  } catch (const std::exception &e) {
    return Status::error("config file " + path + ": " + e.what());
  }
  for (const auto &[key, value] : entries)
    LLMIR_RETURN_IF_ERROR(set(key, value, "config file " + path));
  return Status::ok();
}

Status Config::load(int argc, const char *const *argv) {
  if (!bindingError_.empty())
    return Status::error(bindingError_);
  std::string configPath;
  std::vector<std::pair<std::string, std::string>> flags;
  std::vector<std::string> positionals;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      helpRequested_ = true;
      continue;
    }
    if (arg == "--check-config") {
      checkRequested_ = true;
      continue;
    }
    if (!arg.starts_with("--")) {
      if (!positional_)
        return Status::error("argument '" + arg + "': expected --key=value");
      positionals.push_back(arg);
      continue;
    }
    std::string key = arg.substr(2), value;
    if (size_t eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else if (Field *f = find(key); f && std::holds_alternative<bool *>(f->target)) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return Status::error("flag --" + key + " needs a value");
    }
    if (key == "config")
      configPath = value;
    else if (!find(key))
      return unknownKey(key, "flag --" + key);
    else
      flags.emplace_back(key, value);
  }
  if (!configPath.empty())
    LLMIR_RETURN_IF_ERROR(loadYamlFile(configPath));
  for (const Field &f : fields_)
    if (const char *env = std::getenv(envName(f.key).c_str()))
      LLMIR_RETURN_IF_ERROR(set(f.key, env, "environment " + envName(f.key)));
  for (const auto &[key, value] : flags)
    LLMIR_RETURN_IF_ERROR(set(key, value, "flag --" + key));
  if (positional_ && !positionals.empty())
    *positional_ = std::move(positionals);
  return Status::ok();
}

void Config::loadOrExit(int argc, const char *const *argv) {
  if (Status st = load(argc, argv); !st) {
    std::fprintf(stderr, "%s: %s\n", service_.c_str(), st.message().c_str());
    std::exit(2);
  }
  if (helpRequested_) {
    std::fputs(usage().c_str(), stdout);
    std::exit(0);
  }
}

std::optional<int> Config::loadService(int argc, const char *const *argv,
                                       const std::function<Status()> &validate) {
  Status st = load(argc, argv);
  if (st && helpRequested_) {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (st && validate)
    st = validate();
  if (!st) {
    std::fprintf(stderr, "%s: %s\n", service_.c_str(), st.message().c_str());
    return 2;
  }
  if (checkRequested_) {
    std::printf("%s: configuration is valid\n", service_.c_str());
    return 0;
  }
  return std::nullopt;
}

std::string Config::usage() const {
  std::ostringstream out;
  out << "usage: " << service_ << " [--config=FILE.yaml] [--check-config] [--key=value ...]"
      << (positional_ ? " " + positionalName_ + "..." : std::string()) << "\n"
         "Each key can be set in the YAML file (dots = nested maps), by the "
         "environment variable shown, or by a flag (highest precedence).\n"
         "--check-config loads and validates the configuration, then exits "
         "(0: valid) without starting the service.\n\n";
  for (const Field &f : fields_) {
    out << "  --" << f.key << " ("
        << std::visit([](auto *t) { return std::string(typeName(t)); }, f.target)
        << ", env " << envName(f.key) << ", now ";
    std::visit(
        [&](auto *t) {
          using T = std::remove_pointer_t<decltype(t)>;
          if constexpr (std::is_same_v<T, std::string>) out << '"' << *t << '"';
          else if constexpr (std::is_same_v<T, std::vector<int>>) {
            for (size_t i = 0; i < t->size(); ++i)
              out << (i ? "," : "") << (*t)[i];
          } else if constexpr (std::is_same_v<T, bool>) out << (*t ? "true" : "false");
          else if constexpr (std::is_same_v<T, LogLevel>) out << logLevelName(*t);
          else out << +*t;
        },
        f.target);
    out << ")\n      " << f.doc << "\n";
  }
  if (positional_)
    out << "  " << positionalName_ << "...\n      " << positionalDoc_ << "\n";
  return out.str();
}

} // namespace llmir::net
