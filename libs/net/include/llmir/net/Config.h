// Service configuration: typed fields bound to keys, filled from (lowest to
// highest precedence) their defaults, a YAML file, LLMIR_<KEY> environment
// variables and --key=value flags. Nested YAML maps name keys with dots
// ("http.port" <- http: {port: ...}; env LLMIR_HTTP_PORT). An unknown key in
// the file or on the command line is an error, so typos fail at start.
//
// One spelling for every service (docs/services.md): lower-case words joined
// by '-', groups separated by '.' ("log.level", "timeouts.drain-grace-ms").
// add() enforces it, so a service cannot introduce a second convention, and a
// key written with '_' instead of '-' is rejected with the right spelling in
// the message rather than accepted as an alias.
#pragma once

#include "llmir/net/Log.h"
#include "llmir/support/Status.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace llmir::net {

class Config {
public:
  explicit Config(std::string service) : service_(std::move(service)) {}

  /// Binds `key` to `*target`; the target's current value is the default.
  void add(std::string key, std::string *target, std::string doc);
  void add(std::string key, bool *target, std::string doc);
  void add(std::string key, int *target, std::string doc);
  void add(std::string key, int64_t *target, std::string doc);
  void add(std::string key, uint16_t *target, std::string doc);
  void add(std::string key, uint32_t *target, std::string doc);
  void add(std::string key, uint64_t *target, std::string doc);
  void add(std::string key, double *target, std::string doc);
  /// Comma-separated positive integers ("1,2,8"), e.g. a bench's thread or
  /// batch counts; empty items, zero and negatives are errors.
  void add(std::string key, std::vector<int> *target, std::string doc);
  /// debug, info, warn or error (parseLogLevel): every service's log.level,
  /// checked where the other keys are, with the same message.
  void add(std::string key, LogLevel *target, std::string doc);
  /// Arguments that are not flags (a bench's MODEL_DIR...) go to `*target`
  /// in their order; without this binding such an argument is an error.
  void addPositional(std::string name, std::vector<std::string> *target, std::string doc);

  /// Reads argv: `--config=PATH` (or `--config PATH`) names the YAML file,
  /// arguments without `--` go to the positional binding (addPositional),
  /// `--help` asks for usage(), `--check-config` asks the service to validate
  /// its configuration and exit, `--key=value` / `--key value` set a key
  /// (`--flag` alone sets a bool). Applies file, then environment, then flags.
  /// Fails first if a key was bound with a spelling outside the convention.
  Status load(int argc, const char *const *argv);
  /// load() for a command-line tool (a bench): `--help` prints usage() and
  /// exits 0, an error prints "<name>: <message>" and exits 2.
  void loadOrExit(int argc, const char *const *argv);
  /// load() for a service's main(): returns the exit code when the process
  /// is to stop before starting anything, nullopt when it is to start.
  /// A load error or an error of `validate` (the settings' own rules, run
  /// after the keys are read) prints "<name>: <message>" and gives 2;
  /// `--help` prints usage() and gives 0; `--check-config` runs `validate`,
  /// prints "<name>: configuration is valid" and gives 0.
  std::optional<int> loadService(int argc, const char *const *argv,
                                 const std::function<Status()> &validate = {});
  /// Applies one YAML file (also usable without load()).
  Status loadYamlFile(const std::string &path);
  /// Sets `key` from text; `source` names where it came from, for errors.
  Status set(const std::string &key, const std::string &value,
             const std::string &source);

  bool helpRequested() const { return helpRequested_; }
  /// `--check-config` was given: the service validates its settings, reports
  /// and exits (0 when valid) without starting anything.
  bool checkRequested() const { return checkRequested_; }
  /// Whether `key` follows the spelling convention above.
  static bool isWellSpelled(const std::string &key);
  /// Every key with its type, current value, env variable and doc.
  std::string usage() const;
  /// LLMIR_ + the key upper-cased, '.' and '-' as '_'.
  static std::string envName(const std::string &key);

private:
  using Target = std::variant<std::string *, bool *, int *, int64_t *,
                              uint16_t *, uint32_t *, uint64_t *, double *,
                              std::vector<int> *, LogLevel *>;
  struct Field {
    std::string key;
    Target target;
    std::string doc;
  };
  void addField(std::string key, Target target, std::string doc);
  Field *find(const std::string &key);
  Status unknownKey(const std::string &key, const std::string &source) const;

  std::string service_;
  std::vector<Field> fields_;
  bool helpRequested_ = false;
  bool checkRequested_ = false;
  std::string bindingError_; // a key added with a bad spelling
  std::vector<std::string> *positional_ = nullptr;
  std::string positionalName_, positionalDoc_;
};

} // namespace llmir::net
