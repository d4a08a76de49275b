# lit configuration for LLMIR. Tests live beside this file, mirroring libs/.
import os
import lit.formats

config.name = "LLMIR"
config.test_format = lit.formats.ShTest(execute_external=True)
config.suffixes = [".mlir", ".test"]
config.excludes = ["Inputs", "CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(os.path.dirname(config.llmir_tools_dir), "tests", "lit")

config.environment["PATH"] = os.pathsep.join(
    [config.llmir_tools_dir, config.llvm_tools_dir, config.environment.get("PATH", os.environ["PATH"])])

config.substitutions.append(("%fixtures", config.fixtures_dir))
config.substitutions.append(("%models", os.path.join(config.llmir_source_root, "models")))
if os.path.isdir(config.fixtures_dir):
    config.available_features.add("fixtures")
