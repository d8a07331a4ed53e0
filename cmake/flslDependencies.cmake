# Finds every dependency of flsl::flsl as an imported target. Included by the build and by the
# installed flslConfig.cmake, so a consumer gets exactly the same targets.
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.4 NO_MODULE)
find_dependency(xtl)
find_dependency(xtensor)
find_dependency(TBB)
find_dependency(PNG)
find_dependency(libjpeg-turbo)
find_dependency(nlohmann_json 3)
