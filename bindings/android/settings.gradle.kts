// Lets the module build on its own (`gradle -p bindings/android assembleRelease`); an
// app includes it instead with `include(":tidings")` and
// `project(":tidings").projectDir = file("<repo>/bindings/android")`.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "tidings-sdk"
